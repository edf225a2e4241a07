package tests

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bpftoolElem is one element of `bpftool -j map dump` on a map with BTF.
type bpftoolElem struct {
	Key       []string `json:"key"`
	Formatted struct {
		Key   map[string]any `json:"key"`
		Value map[string]any `json:"value"`
	} `json:"formatted"`
}

func bpftool(t *testing.T, args ...string) []byte {
	t.Helper()
	path, err := exec.LookPath("bpftool")
	if err != nil {
		t.Fatal("bpftool is needed (make deps)")
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func dumpMap(t *testing.T, pin string) []bpftoolElem {
	t.Helper()
	out := bpftool(t, "-j", "map", "dump", "pinned", pin)
	var elems []bpftoolElem
	if err := json.Unmarshal(out, &elems); err != nil {
		t.Fatalf("bpftool dump of %s: %v\n%s", pin, err, out)
	}
	return elems
}

func num(v any) int {
	f, _ := v.(float64)
	return int(f)
}

// sameFrontend: two service map keys differ only in their slot.
func sameFrontend(a, b map[string]any) bool {
	for _, f := range []string{"addr", "port", "proto"} {
		ja, _ := json.Marshal(a[f])
		jb, _ := json.Marshal(b[f])
		if string(ja) != string(jb) {
			return false
		}
	}
	return true
}

// TestPrivilegedFinding6DriftIsRepaired tampers with a running agent's
// datapath the way an operator with bpftool could: it deletes one
// Service's entry and another's live backend slot from the service map,
// removes a link pin and detaches the connect4 program. Within one
// reconciliation period (plus the time of a sync) the agent has put
// everything back, logged it and counted it by kind, and the Services are
// served again. A forced cleanup is noticed and repaired the same way.
func TestPrivilegedFinding6DriftIsRepaired(t *testing.T) {
	const period = 3 * time.Second
	e := newAgentEnv(t, servicesYAML(1, 2, 3))
	e.pods(t, 3, 8080)
	a := e.startHTTPAgent(t, "--reconcile-interval="+period.String())
	a.waitStatus(t, "ready", func(s agentStatusJSON) bool { return s.Ready })
	rows := e.inspect(t)
	webID, emptyID := rows[webFE].ID, rows[emptyFE].ID

	svcPin := filepath.Join(e.bpffs, "socklb_svc_v3")
	elems := dumpMap(t, svcPin)
	var emptyEntry, webEntry *bpftoolElem
	for i := range elems {
		k, v := elems[i].Formatted.Key, elems[i].Formatted.Value
		if num(k["slot"]) == 0 && num(v["rev_nat_id"]) == int(emptyID) {
			emptyEntry = &elems[i]
		}
		if num(k["slot"]) == 0 && num(v["rev_nat_id"]) == int(webID) {
			webEntry = &elems[i]
		}
	}
	if emptyEntry == nil || webEntry == nil {
		t.Fatalf("no service entries with ids %d and %d in the dump: %+v", emptyID, webID, elems)
	}
	liveSlot := num(webEntry.Formatted.Value["base"]) + 1
	var webSlot *bpftoolElem
	for i := range elems {
		if k := elems[i].Formatted.Key; num(k["slot"]) == liveSlot && sameFrontend(k, webEntry.Formatted.Key) {
			webSlot = &elems[i]
		}
	}
	if webSlot == nil {
		t.Fatalf("no live slot %d of web in the dump: %+v", liveSlot, elems)
	}

	var links []string
	entries, err := os.ReadDir(e.bpffs)
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range entries {
		if strings.HasPrefix(de.Name(), "link_") {
			links = append(links, de.Name())
		}
	}
	var connect4, other string
	for _, l := range links {
		switch {
		case strings.Contains(l, "sock4_connect"):
			connect4 = l
		case other == "":
			other = l
		}
	}
	if connect4 == "" || other == "" {
		t.Fatalf("link pins: %v", links)
	}
	var link struct {
		ID int `json:"id"`
	}
	if err := json.Unmarshal(bpftool(t, "-j", "link", "show", "pinned", filepath.Join(e.bpffs, connect4)), &link); err != nil {
		t.Fatal(err)
	}

	tampered := time.Now()
	bpftool(t, append([]string{"map", "delete", "pinned", svcPin, "key"}, emptyEntry.Key...)...)
	bpftool(t, append([]string{"map", "delete", "pinned", svcPin, "key"}, webSlot.Key...)...)
	if err := os.Remove(filepath.Join(e.bpffs, other)); err != nil {
		t.Fatal(err)
	}
	bpftool(t, "link", "detach", "id", strconv.Itoa(link.ID))
	if _, err := e.ask("198.19.0.10:80"); err == nil {
		t.Fatal("connect4 still rewrites after its link was detached: the test tampers with nothing")
	}

	// The empty Service refuses again (its entry is back), web's slot is
	// back, and the pins and the link are there again.
	deadline := tampered.Add(period + 3*time.Second)
	for {
		rows, err := e.tryInspect()
		_, pinErr := os.Stat(filepath.Join(e.bpffs, other))
		_, askErr := e.ask("198.19.0.10:80")
		repaired := err == nil && rows[emptyFE].Frontend != "" && len(rows[webFE].Backends) == 3 &&
			pinErr == nil && askErr == nil && a.metric(t, `socklb_drift_repaired_total{kind="damaged_frontend"}`) >= 1
		if repaired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not repaired %s after the tampering (reconcile interval %s): inspect %v %+v, pin %v, connect %v\n%s",
				time.Since(tampered).Round(time.Millisecond), period, err, rows, pinErr, askErr, a.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("repaired %s after the tampering (reconcile interval %s)", time.Since(tampered).Round(time.Millisecond), period)
	for _, kind := range []string{"missing_frontend", "damaged_frontend", "link_pin_missing", "link_detached"} {
		if v := a.metric(t, `socklb_drift_repaired_total{kind="`+kind+`"}`); v < 1 {
			t.Errorf("socklb_drift_repaired_total{kind=%q} = %v, want at least 1", kind, v)
		}
	}
	for range 30 {
		if _, err := e.ask("198.19.0.10:80"); err != nil {
			t.Fatalf("web after the repair: %v", err)
		}
	}
	if !strings.Contains(a.Logs(), "drift") {
		t.Errorf("no log line reports the drift:\n%s", a.Logs())
	}

	// A forced cleanup while the agent runs: the agent says so, is not
	// ready, and puts the datapath back within a period.
	if out, err := e.agentCmd("cleanup", "--force").CombinedOutput(); err != nil {
		t.Fatalf("cleanup --force: %v\n%s", err, out)
	}
	if _, err := e.ask("198.19.0.10:80"); err == nil {
		t.Fatal("web is still served after a forced cleanup")
	}
	a.waitStatus(t, "the forced cleanup repaired", func(s agentStatusJSON) bool { return s.Ready && e.askOK() })
	if !strings.Contains(a.Logs(), "link pin missing") && !strings.Contains(a.Logs(), "pin directory missing") {
		t.Errorf("the agent did not report the forced cleanup:\n%s", a.Logs())
	}
}

func (e *agentEnv) askOK() bool {
	_, err := e.ask("198.19.0.10:80")
	return err == nil
}
