package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// stopSignals end the agent; the datapath stays attached. SIGQUIT is left
// to Go's default (a goroutine dump), which is what an operator sending it
// wants.
var stopSignals = map[os.Signal]string{
	syscall.SIGTERM: "SIGTERM",
	syscall.SIGINT:  "SIGINT",
}

// notifySignals returns a context that is cancelled on SIGTERM or SIGINT,
// and logs every signal it handles through log, the configured logger. It
// also catches SIGHUP, whose default would kill the agent: the
// configuration is read only at start, so SIGHUP is logged and nothing
// else. stop restores the default handling and returns once nothing more
// is logged.
func notifySignals(parent context.Context, log *slog.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case s := <-ch:
				if s == syscall.SIGHUP {
					log.Warn("received SIGHUP: configuration is read only at start; restart the agent to change it")
					continue
				}
				name := stopSignals[s]
				if stopping {
					log.Info("received "+name+" again: already stopping", "signal", name)
					continue
				}
				stopping = true
				log.Info("received "+name+": stopping; the datapath stays attached", "signal", name)
				cancel()
			}
		}
	})
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			signal.Stop(ch)
			close(done)
			wg.Wait()
			cancel()
		})
	}
}
