package executor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"time"
)

// workerProcess is what supervision needs of a worker's OS process. The
// real one is *process; the supervision tests use a fake, so that the
// state machine (kill, reap, replace, back off) is tested without starting
// programs.
type workerProcess interface {
	// PID is the process id, for logs and status.
	PID() int
	// Exited is closed once the process has exited and been reaped.
	Exited() <-chan struct{}
	// Err is the exit status; read it only after Exited is closed.
	Err() error
	// Kill SIGKILLs the process group and waits until it is reaped.
	Kill()
	// Stop asks the process to exit (SIGTERM) and kills its group after
	// grace.
	Stop(grace time.Duration)
}

// alive reports whether p has not exited yet.
func alive(p workerProcess) bool {
	select {
	case <-p.Exited():
		return false
	default:
		return true
	}
}

// process is one worker process, the leader of its own process group.
//
// Two mechanisms make sure no worker outlives hourglassd:
//   - Pdeathsig: the kernel sends SIGKILL to the worker when the thread that
//     started it exits. Go ties this to the OS *thread*, not the process
//     (golang/go#27505), so the starting goroutine locks its thread and keeps
//     it for the child's whole life; when hourglassd dies, even by kill -9,
//     the thread dies and the worker gets SIGKILL.
//   - Setpgid: the worker leads a new process group, so killing the group
//     (kill(-pgid)) also takes any helper processes the worker started.
//
// A grandchild is covered by the group kill, not by the parent-death signal:
// if hourglassd itself is SIGKILLed, a grandchild that left the group or
// outlived its parent is reparented and survives. In a container, the
// cgroup (the pod or systemd unit being stopped) covers that case.
type process struct {
	pid int
	// exited is closed once the process has exited and been reaped.
	exited chan struct{}
	// waitErr is the exit status; read it only after exited is closed.
	waitErr error
}

// startProcess starts argv with extra environment variables and returns once
// the process runs (or failed to start).
func startProcess(argv []string, env []string, logs io.Writer) (*process, error) {
	if len(argv) == 0 {
		return nil, errors.New("empty worker command")
	}
	p := &process{exited: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends the
		// thread, which is fine because the child has exited by then.
		runtime.LockOSThread()
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), env...)
		cmd.Stdout = logs
		cmd.Stderr = logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start worker %q: %w", argv[0], err)
	}
	return p, nil
}

// signalGroup sends sig to the worker's whole process group. ESRCH (the
// group is already gone) is not an error.
func (p *process) signalGroup(sig syscall.Signal) error {
	if err := syscall.Kill(-p.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %v to process group %d: %w", sig, p.pid, err)
	}
	return nil
}

// kill SIGKILLs the whole process group and waits until the leader is
// reaped, so no zombie is left behind.
func (p *process) kill() {
	_ = p.signalGroup(syscall.SIGKILL)
	<-p.exited
}

// stop asks the worker to exit with SIGTERM and kills its group if it has not
// exited within grace. Either way the group gets a final SIGKILL so that no
// helper process the worker started is left behind.
func (p *process) stop(grace time.Duration) {
	_ = p.signalGroup(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
	}
	p.kill()
}

func (p *process) PID() int                 { return p.pid }
func (p *process) Exited() <-chan struct{}  { return p.exited }
func (p *process) Err() error               { return p.waitErr }
func (p *process) Kill()                    { p.kill() }
func (p *process) Stop(grace time.Duration) { p.stop(grace) }
