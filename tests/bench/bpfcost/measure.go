package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/socklb/socklb"
	"github.com/socklb/socklb/internal/sandbox"
	"github.com/socklb/socklb/pkg/loader"
	lbmaps "github.com/socklb/socklb/pkg/maps"
)

// The cases every size measures besides the --variant ones.
const (
	// committed: the programs of this tree, as pkg/loader loads them,
	// connecting to Services.
	committed = "socklb"
	// miss: the same programs, connecting to the backends' own addresses,
	// which are not Services: what every other connect in the cgroup pays.
	miss = "socklb, no Service"
	// floor: programs that only return 1, connecting to the backends: the
	// cost of the run-time statistics themselves.
	floor = "empty"

	// defaultMapEntries is the size bpf/socklb.c gives the service and
	// backend maps; they are only made larger when a size needs it.
	defaultMapEntries = 262144

	backendPort = 8080
	maxBackends = lbmaps.MaxBackendsPerService
	// maxBackendAddrs is how many distinct 127.a.b.c addresses
	// backendAddr hands out.
	maxBackendAddrs = 254 * 256 * 254
	// vipsPerPort is how many Service addresses share one port.
	vipsPerPort = 65000
)

// results are the counts of one run.
type results struct {
	svcEntries, beEntries uint32
	sizes                 []sizeResult
	hooks                 []string // sections that ran, e.g. cgroup/connect4
}

type sizeResult struct {
	services int
	fill     time.Duration
	byVar    map[string]*varResult
}

type varResult struct {
	connects, failed, wrongPeer int
	wall                        time.Duration
	hooks                       map[string]*ebpf.ProgramStats // by section, summed over rounds
}

// hook is one cgroup hook and what each variant puts there. The hooks of
// the committed programs have pinned links whose program is swapped in
// place; a hook only a variant uses is attached while that variant runs.
type hook struct {
	name, section string
	attach        ebpf.AttachType
	pinned        bool
	link          link.Link                // nil while an extra hook is detached
	progs         map[string]*ebpf.Program // by variant; missing: not used
}

type world struct {
	cfg      config
	ns       *sandbox.Netns
	cgroup   string
	pins     string
	dp       *loader.Datapath
	maps     lbmaps.Maps
	hooks    []*hook
	services int // Services in the maps so far
}

func measure(ctx context.Context, c config) (_ *results, err error) {
	if err := sandbox.CheckPrivileges(); err != nil {
		return nil, err
	}
	var undo sandbox.Undo
	defer func() { err = errors.Join(err, undo.Run()) }()

	largest := c.sizes[len(c.sizes)-1]
	res := &results{
		svcEntries: max(defaultMapEntries, uint32(largest*(c.backends+1)+largest/8)),
		beEntries:  max(defaultMapEntries, uint32(largest*c.backends+largest/8)),
	}
	if c.entries > 0 {
		res.svcEntries, res.beEntries = uint32(c.entries), uint32(c.entries)
	}
	w := &world{cfg: c}
	if err := w.setup(&undo, res); err != nil {
		return nil, err
	}

	stats, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics: %w", err)
	}
	undo.Add(stats.Close)

	ran := map[string]bool{}
	for _, n := range c.sizes {
		start := time.Now()
		if err := w.fill(ctx, n); err != nil {
			return nil, err
		}
		sr := sizeResult{services: n, fill: time.Since(start), byVar: map[string]*varResult{}}
		fmt.Fprintf(os.Stderr, "%d Services in the maps (%s); measuring\n", n, sr.fill.Round(time.Millisecond))
		for _, v := range c.variants {
			sr.byVar[v.name] = &varResult{hooks: map[string]*ebpf.ProgramStats{}}
		}
		per := c.connects / c.rounds
		for r := range c.rounds {
			// Rotate the order, so no variant always runs first.
			for i := range c.variants {
				v := c.variants[(i+r)%len(c.variants)]
				seed := uint64(n)<<16 | uint64(r)
				if err := w.round(ctx, v.name, per, seed, sr.byVar[v.name]); err != nil {
					return nil, fmt.Errorf("%d Services, %s: %w", n, v.name, err)
				}
			}
		}
		if err := w.use(committed); err != nil {
			return nil, err
		}
		for _, vr := range sr.byVar {
			for s, st := range vr.hooks {
				if st.RunCount > 0 {
					ran[s] = true
				}
			}
		}
		res.sizes = append(res.sizes, sr)
	}
	for _, h := range w.hooks {
		if ran[h.section] {
			res.hooks = append(res.hooks, h.section)
		}
	}
	return res, nil
}

// setup builds the namespace, cgroup, bpffs, programs and backends.
func (w *world) setup(undo *sandbox.Undo, res *results) error {
	ns, rmNS, err := sandbox.CreateNetns("socklb-bpfcost-")
	if err != nil {
		return err
	}
	undo.Add(rmNS)
	w.ns = ns
	cg, rmCg, err := sandbox.CreateCgroup("socklb-bpfcost-")
	if err != nil {
		return err
	}
	undo.Add(rmCg)
	w.cgroup = cg.Path()
	fs, rmFS, err := sandbox.CreateBPFFS("socklb-bpfcost-bpffs-")
	if err != nil {
		return err
	}
	undo.Add(rmFS)
	w.pins = filepath.Join(fs, "socklb")

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dp, err := loader.Load(loader.Options{
		BPFFSPath: w.pins, CgroupPath: cg.Path(), Logger: log,
		MaxServiceEntries: res.svcEntries, MaxBackendEntries: res.beEntries,
	})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	undo.Add(func() error { return errors.Join(dp.Close(), loader.Cleanup(w.pins, nil)) })
	w.dp = dp
	w.maps = lbmaps.New(&dp.Maps)
	if err := w.loadHooks(undo, res); err != nil {
		return err
	}

	if w.cfg.proto == "tcp" {
		// One listener takes the connects to every 127.x.y.z backend.
		l, err := ns.Listen("tcp4", fmt.Sprintf(":%d", backendPort))
		if err != nil {
			return err
		}
		undo.Add(func() error {
			if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
				return err
			}
			return nil
		})
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}

	// Sockets join the cgroup of the process that creates them.
	restore, err := cg.EnterSelf()
	if err != nil {
		return err
	}
	undo.Add(restore)
	return nil
}

// loadHooks opens the pinned links and loads every variant's programs.
func (w *world) loadHooks(undo *sandbox.Undo, res *results) error {
	spec, err := socklb.LoadBpf()
	if err != nil {
		return err
	}
	names := make([]string, 0, len(spec.Programs))
	for name, ps := range spec.Programs {
		if ps.Type == ebpf.CGroupSockAddr {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		ps := spec.Programs[name]
		l, err := link.LoadPinnedLink(filepath.Join(w.pins, "link_"+name), nil)
		if err != nil {
			return fmt.Errorf("open the link of %s: %w", name, err)
		}
		undo.Add(l.Close)
		h := &hook{name: name, section: ps.SectionName, attach: ps.AttachType, pinned: true, link: l, progs: map[string]*ebpf.Program{}}
		w.hooks = append(w.hooks, h)

		info, err := l.Info()
		if err != nil {
			return fmt.Errorf("link info of %s: %w", name, err)
		}
		p, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			return fmt.Errorf("open program %s: %w", name, err)
		}
		undo.Add(p.Close)
		h.progs[committed] = p
		h.progs[miss] = p

		p, err = ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: name, Type: ps.Type, AttachType: ps.AttachType, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		})
		if err != nil {
			return fmt.Errorf("load the empty %s: %w", name, err)
		}
		undo.Add(p.Close)
		h.progs[floor] = p
	}

	for _, v := range w.cfg.variants {
		if v.path == "" {
			continue
		}
		vs, err := ebpf.LoadCollectionSpec(v.path)
		if err != nil {
			return fmt.Errorf("variant %s: %w", v.name, err)
		}
		for name, ps := range vs.Programs {
			if ps.Type != ebpf.CGroupSockAddr && ps.Type != ebpf.CGroupSock {
				delete(vs.Programs, name)
			}
		}
		// The same sizes as the pinned maps, which the variant shares.
		if ms := vs.Maps[socklb.BpfMapSocklbSvcV3]; ms != nil {
			ms.MaxEntries = res.svcEntries
		}
		if ms := vs.Maps[socklb.BpfMapSocklbBeV3]; ms != nil {
			ms.MaxEntries = res.beEntries
		}
		coll, err := ebpf.NewCollectionWithOptions(vs, ebpf.CollectionOptions{
			Maps: ebpf.MapOptions{PinPath: w.pins},
		})
		if err != nil {
			return fmt.Errorf("variant %s: %w", v.name, err)
		}
		undo.Add(func() error { coll.Close(); return nil })
		for _, h := range w.hooks {
			if h.pinned && coll.Programs[h.name] == nil {
				return fmt.Errorf("variant %s has no program %s", v.name, h.name)
			}
		}
		for _, name := range slices.Sorted(maps.Keys(coll.Programs)) {
			i := slices.IndexFunc(w.hooks, func(h *hook) bool { return h.name == name })
			if i < 0 {
				ps := vs.Programs[name]
				w.hooks = append(w.hooks, &hook{name: name, section: ps.SectionName, attach: ps.AttachType, progs: map[string]*ebpf.Program{}})
				i = len(w.hooks) - 1
			}
			w.hooks[i].progs[v.name] = coll.Programs[name]
		}
	}
	undo.Add(func() error {
		var errs []error
		for _, h := range w.hooks {
			if !h.pinned && h.link != nil {
				errs = append(errs, h.link.Close())
			}
		}
		return errors.Join(errs...)
	})
	return nil
}

// frontend is Service i's address: 198.19.0.0/16, vipsPerPort per port.
func frontend(i int, proto uint8) lbmaps.Frontend {
	a := 1 + i%vipsPerPort
	return lbmaps.Frontend{
		Addr:  netip.AddrFrom4([4]byte{198, 19, byte(a >> 8), byte(a)}),
		Port:  uint16(80 + i/vipsPerPort),
		Proto: proto,
	}
}

// backendAddr is the j-th backend's address, 127.a.b.c with c in 1..254:
// every address of 127/8 is local on the namespace's lo.
func backendAddr(j int) netip.Addr {
	return netip.AddrFrom4([4]byte{127, byte(1 + j/(254*256)), byte(j / 254 % 256), byte(1 + j%254)})
}

func (w *world) protoNum() uint8 {
	if w.cfg.proto == "udp" {
		return lbmaps.ProtoUDP
	}
	return lbmaps.ProtoTCP
}

// fill adds Services until there are n, each with its own backends.
func (w *world) fill(ctx context.Context, n int) error {
	proto := w.protoNum()
	ids := make([]lbmaps.BackendID, w.cfg.backends)
	for i := w.services; i < n; i++ {
		if i%1000 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		for k := range ids {
			j := i*w.cfg.backends + k
			ids[k] = lbmaps.BackendID(j + 1)
			b := lbmaps.Backend{Addr: backendAddr(j), Port: backendPort, Proto: proto}
			if err := w.maps.UpsertBackend(ids[k], b); err != nil {
				return err
			}
		}
		svc := lbmaps.Service{
			Frontend: frontend(i, proto),
			RevNATID: lbmaps.RevNATID(i + 1),
			Name:     fmt.Sprintf("bpfcost/svc-%d:80", i),
			Backends: ids,
		}
		if err := w.maps.PublishService(svc); err != nil {
			return err
		}
	}
	w.services = n
	return nil
}

// use puts variant's programs on every hook, and takes the extra hooks
// it does not use away.
func (w *world) use(variant string) error {
	for _, h := range w.hooks {
		p := h.progs[variant]
		switch {
		case h.pinned:
			if err := h.link.Update(p); err != nil {
				return fmt.Errorf("put %s's %s on its hook: %w", variant, h.name, err)
			}
		case p == nil && h.link != nil:
			if err := h.link.Close(); err != nil {
				return fmt.Errorf("detach %s: %w", h.name, err)
			}
			h.link = nil
		case p != nil && h.link != nil:
			if err := h.link.Update(p); err != nil {
				return fmt.Errorf("put %s's %s on its hook: %w", variant, h.name, err)
			}
		case p != nil:
			l, err := link.AttachCgroup(link.CgroupOptions{Path: w.cgroup, Attach: h.attach, Program: p})
			if err != nil {
				return fmt.Errorf("attach %s's %s: %w", variant, h.name, err)
			}
			h.link = l
		}
	}
	return nil
}

func (w *world) stats(variant string) (map[string]*ebpf.ProgramStats, error) {
	out := map[string]*ebpf.ProgramStats{}
	for _, h := range w.hooks {
		if h.progs[variant] == nil {
			continue
		}
		st, err := h.progs[variant].Stats()
		if err != nil {
			return nil, fmt.Errorf("statistics of %s: %w", h.name, err)
		}
		out[h.section] = st
	}
	return out, nil
}

// round runs count connects with variant's programs in place: to the
// backends' own addresses for miss and floor, to Services for the others.
func (w *world) round(ctx context.Context, variant string, count int, seed uint64, vr *varResult) error {
	if err := w.use(variant); err != nil {
		return err
	}
	before, err := w.stats(variant)
	if err != nil {
		return err
	}
	start := time.Now()
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	var failed, wrong int
	var firstErr error
	err = w.ns.Do(func() error {
		for i := range count {
			if i%256 == 0 && ctx.Err() != nil {
				return ctx.Err()
			}
			svc := rng.IntN(w.services)
			be := svc*w.cfg.backends + rng.IntN(w.cfg.backends)
			fe := frontend(svc, w.protoNum())
			to := netip.AddrPortFrom(fe.Addr, fe.Port)
			if variant == miss || variant == floor {
				to = netip.AddrPortFrom(backendAddr(be), backendPort)
			}
			peer, err := w.connect(to)
			switch {
			case err != nil:
				failed++
				if firstErr == nil {
					firstErr = fmt.Errorf("connect %s: %w", to, err)
				}
			case peer != to:
				wrong++
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	vr.wall += time.Since(start)
	after, err := w.stats(variant)
	if err != nil {
		return err
	}
	if failed == count {
		return fmt.Errorf("every connect failed, the first with: %w", firstErr)
	}
	vr.connects += count
	vr.failed += failed
	vr.wrongPeer += wrong
	for s, a := range after {
		b := before[s]
		sum := vr.hooks[s]
		if sum == nil {
			sum = &ebpf.ProgramStats{}
			vr.hooks[s] = sum
		}
		sum.Runtime += a.Runtime - b.Runtime
		sum.RunCount += a.RunCount - b.RunCount
	}
	return nil
}

// connect opens a socket, connects it to to, asks for its peer (which runs
// the getpeername hook, as Go's Dial does) and closes it with an RST, so
// that no TIME_WAIT piles up.
func (w *world) connect(to netip.AddrPort) (netip.AddrPort, error) {
	typ := unix.SOCK_STREAM
	if w.cfg.proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_STREAM {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			return netip.AddrPort{}, err
		}
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: to.Addr().As4(), Port: int(to.Port())}); err != nil {
		return netip.AddrPort{}, err
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("getpeername: %T", sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)), nil
}
