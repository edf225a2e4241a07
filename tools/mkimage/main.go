// Command mkimage writes the agent's container image, built from the static
// agent binary alone (no Docker, no base image), as one tar archive that is
// both an OCI image layout and a `docker save` archive:
//
//	go run ./tools/mkimage --binary bin/socklb-agent --out bin/socklb-agent-image.tar \
//		--version "$(git describe --always --dirty)" --created "$(git log -1 --format=%ct)"
//
// `make image` runs it. The image is tagged socklb-agent:<version> and
// socklb-agent:latest (see --tags); the same binary and flags always give the
// same archive, byte for byte.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/socklb/socklb/internal/ociimage"
)

// The image name and the tags besides the version; deploy/daemonset.yaml
// runs imageName:latest (main_test.go checks it).
const (
	imageName = "socklb-agent"
	extraTags = "latest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		binary   = flag.String("binary", "bin/socklb-agent", "the static agent binary")
		out      = flag.String("out", "bin/socklb-agent-image.tar", "the image archive to write")
		repo     = flag.String("name", imageName, "image name (repository) the tags belong to")
		version  = flag.String("version", "", "agent version: a tag and the org.opencontainers.image.version label (required)")
		extra    = flag.String("tags", extraTags, "comma-separated tags besides the version")
		revision = flag.String("revision", "", "source commit, the org.opencontainers.image.revision label")
		source   = flag.String("source", "https://github.com/socklb/socklb", "source repository, the org.opencontainers.image.source label")
		created  = flag.String("created", os.Getenv("SOURCE_DATE_EPOCH"), "image creation time and file times, in Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	)
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *version == "" {
		return errors.New("--version is required")
	}
	var epoch int64
	if *created != "" {
		var err error
		if epoch, err = strconv.ParseInt(*created, 10, 64); err != nil {
			return fmt.Errorf("--created %q: want Unix seconds: %w", *created, err)
		}
	}
	tags := []string{*repo + ":" + *version}
	for _, t := range strings.Split(*extra, ",") {
		if t = strings.TrimSpace(t); t != "" && t != *version {
			tags = append(tags, *repo+":"+t)
		}
	}

	img, err := ociimage.Build(*binary, ociimage.Options{
		Version:  *version,
		Revision: *revision,
		Source:   *source,
		Created:  time.Unix(epoch, 0),
	})
	if err != nil {
		return err
	}
	if err := ociimage.WriteFile(*out, img, tags); err != nil {
		return err
	}
	digest, err := img.Digest()
	if err != nil {
		return fmt.Errorf("image digest: %w", err)
	}
	fi, err := os.Stat(*out)
	if err != nil {
		return err
	}
	fmt.Printf("wrote %s (%.1f MiB): %s, digest %s\n", *out, float64(fi.Size())/(1<<20), strings.Join(tags, ", "), digest)
	return nil
}
