// Package conformance builds, once, what a run of Kubernetes' own Services
// conformance specs on the test node needs, and reads the run's report:
// the upstream e2e test binary and agnhost, from the release the cluster
// runs (the e2ebin module), agnhost's image above a Debian root filesystem
// with the tools the specs run in it (sh, nc, curl, nslookup), and the
// specs' results from ginkgo's JUnit report. The run itself is
// TestConformance in tests/node/e2e (`make conformance`).
package conformance

// Focus selects the specs: every Services conformance spec of sig-network.
const Focus = `\[sig-network\] Services.*\[Conformance\]`

// ImagePrefix is where the run's images live in the node's containerd.
// RepoList maps the upstream registries the specs name to it, so that no
// image is ever pulled.
const ImagePrefix = "localhost/e2e"

// RepoList is the file KUBE_TEST_REPO_LIST names: e2e.test's image
// registries (its test/utils/image), all mapped to ImagePrefix. It must be
// in the environment, not a flag: some image names are computed when the
// packages initialize, before flags are parsed.
func RepoList() string {
	var b []byte
	for _, key := range []string{"promoterE2eRegistry", "buildImageRegistry", "gcEtcdRegistry",
		"gcRegistry", "sigStorageRegistry", "privateRegistry", "dockerLibraryRegistry", "cloudProviderGcpRegistry"} {
		b = append(b, key+": "+ImagePrefix+"\n"...)
	}
	return string(b)
}

// AgnhostImage is agnhost's name in the node's containerd at version.
func AgnhostImage(version string) string { return ImagePrefix + "/agnhost:" + version }

// PauseImage is the pause image's name as the specs would name it.
func PauseImage(version string) string { return ImagePrefix + "/pause:" + version }
