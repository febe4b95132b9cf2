// Package server is the framework shared by the storage, proxy and archive
// servers: connection handling and dispatch over package wire, the common
// commands, per-volume state tables, action counters and stop states, the
// background task queue and foreground limit, graceful and forced shutdown,
// and restart recovery (system.md §3–7).
//
// # What a Server does
//
// Run binds the address (TCP "host:port" or "unix:/path"), calls the
// service's Recover, then accepts connections, never more than MaxConns
// (-maxconn, default 10) at once: past the limit the accept loop waits for a
// connection to end. Each connection's handshake names one command; the
// Server runs its Handler on the connection's goroutine with the command's
// arguments, sends the handler's error (if any) as an error reply with the
// right wire code, and ends the exchange with wire.Conn.Finish. Logs use
// log/slog with the keys cmd, peer, vol, gid, lsid, task.
//
// Every server answers these commands:
//
//	command                  reply
//	-----------------------  -----------------------------------------------
//	status [ARGS]            ok, string vector: server, limits and task lines,
//	                         then the service's (StatusReporter); with ARGS
//	                         only the service's
//	get TARGET [ARGS]        ok, then the value (string, strings, u64, bool or
//	                         a meta record) of the GetHandler of TARGET;
//	                         built in: host-type, pid, handler-stat
//	shutdown [graceful|force] accept, then the shutdown starts
//	sleep [SECONDS]          ok after sleeping (default 0)
//	version                  ok, string
//	handler-stat             ok, string vector: per command and client, the
//	                         count and average latency since the last call
//	kick [ARGS]              ok, after the service's Kick (Kicker) and after
//	                         making every delayed background task due now
//
// Shutdown is graceful (stop accepting and starting background tasks, wait
// for running handlers and tasks) or forced (also cancel their contexts);
// the shutdown command, Server.Shutdown and the cancellation of Run's
// context (a signal) trigger it. Service loops started with Go are canceled
// by either kind. Run returns when everything has stopped, after closing
// the service if it is an io.Closer.
//
// # Volumes and state tables
//
// A server's volume states are one table (a StateMachine built from
// Transition rows From -> Via -> To, Via being a transient state), and a
// Volumes registry holds each volume's current state, running actions
// (Merge, Apply, WlogSend...) and stop state under one lock. Commands change
// state through a StateTxn that rolls the transient state back if the
// command fails, and state their preconditions as a Guard, checked
// atomically with the change:
//
//	tx, err := vols.Begin(ctx, vol, "FullSync", server.Guard{
//		States: []string{"SyncReady"}, Idle: true, NotStopping: true})
//	if err != nil {
//		return err // ErrWrongState / ErrActionRunning / ErrStopping: the client gets the code
//	}
//	defer tx.Rollback()
//	...
//	return tx.Commit("Archived")
//
// Only steady states are persisted; a restarted server loads them with
// Volumes.Set in Recover. Every volume argument is checked with
// ValidateVolumeName first.
//
// # Foreground and background work
//
// Long commands take a foreground slot with Foreground (-fg, default 2);
// past the limit the client gets "exceeds max foreground tasks"
// (ErrTooManyTasks). Background work is keyed tasks in the TaskQueue
// (Server.Tasks), run by MaxBackground workers (-bg) through the service's
// RunTask: a key is queued at most once and never runs twice at a time;
// errors are retried with a doubling delay (-delay, -maxdelay); Kick runs
// the delayed tasks at once.
//
// # How to write a server with this
//
//  1. Define the state table as a package variable with MustStateMachine,
//     the way system.md lists it, and keep the volumes in a Volumes.
//  2. Write a service type holding the Server, the Volumes and the base
//     directory. Its Recover(ctx) reads each volume directory, loads the
//     steady state with Volumes.Set, deletes temporary files, and pushes
//     the background tasks that must resume (Server.Tasks().Push).
//  3. Register one Handler per command (Handle) and one GetHandler per get
//     target (HandleGet). A handler validates its arguments
//     (ValidateVolumeName, ErrBadArgs), checks the state with a Guard or a
//     StateTxn, replies (SendOK, or SendAccept before long work), and
//     returns an error to send an error reply. Protocol handlers
//     (wlog-transfer, wdiff-transfer...) use the wire.Conn's typed frames
//     and streams.
//  4. Implement RunTask for background tasks, StatusReporter and Kicker if
//     needed, and io.Closer to release resources.
//  5. main: flags -> Config -> New -> register -> Run(ctx, service) with a
//     context canceled on SIGTERM/SIGINT.
//
// A minimal server with one volume command:
//
//	var states = server.MustStateMachine("Clear",
//		server.Transition{From: "Clear", Via: "InitVol", To: "Ready"},
//		server.Transition{From: "Ready", Via: "ClearVol", To: "Clear"},
//	)
//
//	type demo struct {
//		srv  *server.Server
//		vols *server.Volumes
//	}
//
//	func (d *demo) Recover(ctx context.Context) error { return nil } // read the base directory here
//
//	func (d *demo) initVol(ctx context.Context, c *wire.Conn, args []string) error {
//		if len(args) != 1 {
//			return errors.Wrap(server.ErrBadArgs, "init-vol VOL")
//		}
//		vol := args[0]
//		if err := server.ValidateVolumeName(vol); err != nil {
//			return err
//		}
//		tx, err := d.vols.Begin(ctx, vol, "InitVol", server.Guard{States: []string{"Clear"}})
//		if err != nil {
//			return err
//		}
//		defer tx.Rollback()
//		// ... create the volume directory, persist "Ready" ...
//		if err := tx.Commit("Ready"); err != nil {
//			return err
//		}
//		return c.SendOK(ctx)
//	}
//
//	func main() {
//		srv, _ := server.New(server.Config{ID: "demo", Addr: ":5000", HostType: "demo"})
//		d := &demo{srv: srv, vols: server.NewVolumes(states, srv.Logger())}
//		srv.Handle("init-vol", d.initVol)
//		srv.HandleGet("state", func(ctx context.Context, args []string) (any, error) {
//			if len(args) != 1 {
//				return nil, errors.Wrap(server.ErrBadArgs, "get state VOL")
//			}
//			if err := server.ValidateVolumeName(args[0]); err != nil {
//				return nil, err
//			}
//			return d.vols.State(args[0]), nil
//		})
//		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
//		defer stop()
//		if err := srv.Run(ctx, d); err != nil {
//			log.Fatal(err)
//		}
//	}
//
// The runnable version of this, with a client, is Example in
// example_test.go.
package server
