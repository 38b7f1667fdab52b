// Command hourglass-bench measures what hourglass promises, with the real
// binaries on loopback, and writes BENCHMARKS.md plus PNG plots under docs/.
//
// Every figure is a ratio against a baseline run by the same process in the
// same minute (a bare gRPC echo server, the naive FIFO pool, the step time or
// the cancel grace), because the machines it runs on are shared and noisy.
// Nothing here asserts a speed: --smoke runs every figure tiny and only
// checks that each figure and the report were produced.
//
//	hourglass-bench [--smoke] [--bin DIR] [--out DIR] [--figures 1,2,3,4,5,6]
//
// Figures:
//
//  1. overhead of hourglassd over a bare grpc-go unary echo server
//  2. post-deadline work: deadline → worker slot free again
//  3. capacity restore: worker kill → ready worker, with and without spares
//  4. goodput and kept promises under overload: hourglass defaults vs the
//     previous point-estimate policy vs the naive FIFO pool
//  5. scale: the executor's queue at 100 … 10,000 waiting jobs
//  6. simulation: the scheduling core over millions of simulated jobs
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"image/png"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "echo-server" {
		os.Exit(runEcho(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:]))
}

// options are the command line.
type options struct {
	smoke   bool
	binDir  string
	outDir  string
	keep    bool
	figures []int
}

// harness is one benchmark run: where the binaries, configs and logs live,
// the processes it started, and the results so far.
type harness struct {
	opts    options
	ctx     context.Context
	work    string // temporary directory: configs, logs, built binaries
	binDir  string
	outDir  string
	docsDir string
	started time.Time

	loadAvg  string
	procs    []*proc // every process started, stopped at the end
	commands []commandLine
	starts   map[string]int // servers started, by label
	sections []*section
}

// commandLine is one server the harness started, for the report.
type commandLine struct {
	figure int
	label  string
	argv   []string
	yaml   string
}

// section is one figure of the report.
type section struct {
	figure int
	title  string
	png    string // file name under docs/
	body   string // markdown
	// summary is the figure's headline, one line for the report's summary.
	summary string
	err     error
	// carried marks a figure not run this time, kept from the report
	// already there (see carry.go).
	carried bool
}

func run(args []string) int {
	var o options
	var figures string
	fs := flag.NewFlagSet("hourglass-bench", flag.ContinueOnError)
	fs.BoolVar(&o.smoke, "smoke", false, "run every figure tiny (seconds) and only check that each was produced; writes to a temporary directory unless --out is given")
	fs.StringVar(&o.binDir, "bin", "", "`directory` holding hourglassd and hourglass-worker (default: build them into a temporary directory)")
	fs.StringVar(&o.outDir, "out", "", "`directory` to write BENCHMARKS.md and docs/*.png into (default: the module root; with --smoke a temporary directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory (configs, server logs)")
	fs.StringVar(&figures, "figures", "1,2,3,4,5,6", "comma-separated `list` of figures to run")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, f := range strings.Split(figures, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 6 {
			fmt.Fprintf(os.Stderr, "hourglass-bench: bad figure %q in --figures\n", f)
			return 2
		}
		o.figures = append(o.figures, n)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	h := &harness{opts: o, ctx: ctx, started: time.Now(), loadAvg: readTrim("/proc/loadavg"), starts: map[string]int{}}
	err := h.setup()
	if err == nil {
		err = h.runFigures()
	}
	h.stopAll()
	if err != nil {
		fmt.Fprintf(os.Stderr, "hourglass-bench: %v\n", err)
		h.cleanup()
		return 1
	}
	if err := h.writeReport(); err != nil {
		fmt.Fprintf(os.Stderr, "hourglass-bench: write report: %v\n", err)
		h.cleanup()
		return 1
	}
	code := 0
	if err := h.verify(); err != nil {
		fmt.Fprintf(os.Stderr, "hourglass-bench: %v\n", err)
		code = 1
	}
	fmt.Fprintf(os.Stderr, "hourglass-bench: %s in %v\n", map[bool]string{true: "smoke run", false: "run"}[o.smoke],
		time.Since(h.started).Round(time.Second))
	h.cleanup()
	return code
}

// setup creates the work directory, finds or builds the binaries and
// decides where the report goes.
func (h *harness) setup() error {
	var err error
	h.work, err = os.MkdirTemp("", "hourglass-bench-")
	if err != nil {
		return err
	}
	root, err := moduleRoot()
	if err != nil && (h.opts.binDir == "" || (h.opts.outDir == "" && !h.opts.smoke)) {
		return fmt.Errorf("find the module root (run from inside the repository, or give --bin and --out): %w", err)
	}
	h.binDir = h.opts.binDir
	if h.binDir == "" {
		h.binDir = filepath.Join(h.work, "bin")
		logf("building hourglassd and hourglass-worker into %s", h.binDir)
		cmd := exec.CommandContext(h.ctx, "go", "build", "-o", h.binDir+"/", "./cmd/hourglassd", "./cmd/hourglass-worker")
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build: %w", err)
		}
	}
	if h.binDir, err = filepath.Abs(h.binDir); err != nil {
		return err
	}
	for _, b := range []string{"hourglassd", "hourglass-worker"} {
		if _, err := os.Stat(filepath.Join(h.binDir, b)); err != nil {
			return fmt.Errorf("--bin %s: %w", h.binDir, err)
		}
	}
	switch {
	case h.opts.outDir != "":
		h.outDir = h.opts.outDir
	case h.opts.smoke:
		h.outDir = filepath.Join(h.work, "out")
	default:
		h.outDir = root
	}
	h.docsDir = filepath.Join(h.outDir, "docs")
	return os.MkdirAll(h.docsDir, 0o755)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// runFigures runs each figure in turn. A failed figure is recorded in its
// section and the run goes on; an interrupt stops it.
func (h *harness) runFigures() error {
	figs := map[int]func(*section) error{
		1: h.figOverhead, 2: h.figPostDeadline, 3: h.figRestore, 4: h.figGoodput, 5: h.figScale, 6: h.figSim,
	}
	for _, n := range h.opts.figures {
		s := &section{figure: n}
		start := time.Now()
		logf("figure %d: start", n)
		s.err = figs[n](s)
		h.stopAll()
		if s.err != nil {
			logf("figure %d: FAILED after %v: %v", n, time.Since(start).Round(time.Millisecond), s.err)
		} else {
			logf("figure %d: done in %v", n, time.Since(start).Round(time.Millisecond))
		}
		h.sections = append(h.sections, s)
		if h.ctx.Err() != nil {
			return h.ctx.Err()
		}
	}
	return nil
}

// verify checks that every figure asked for produced its section and a
// PNG that decodes, and that the report exists.
func (h *harness) verify() error {
	var problems []string
	for _, n := range h.opts.figures {
		i := slices.IndexFunc(h.sections, func(s *section) bool { return s.figure == n })
		if i < 0 {
			problems = append(problems, fmt.Sprintf("figure %d: not run", n))
			continue
		}
		s := h.sections[i]
		if s.err != nil {
			problems = append(problems, fmt.Sprintf("figure %d: %v", n, s.err))
			continue
		}
		data, err := os.ReadFile(filepath.Join(h.docsDir, s.png))
		if err != nil {
			problems = append(problems, fmt.Sprintf("figure %d: %v", n, err))
			continue
		}
		cfg, err := png.DecodeConfig(bytes.NewReader(data))
		if err != nil || cfg.Width < 100 || cfg.Height < 100 {
			problems = append(problems, fmt.Sprintf("figure %d: %s is not a usable PNG (%v)", n, s.png, err))
		}
	}
	report, err := os.ReadFile(filepath.Join(h.outDir, "BENCHMARKS.md"))
	if err != nil {
		problems = append(problems, err.Error())
	} else {
		for _, s := range h.sections {
			if !bytes.Contains(report, []byte(s.title)) || s.title == "" {
				problems = append(problems, fmt.Sprintf("figure %d: missing from BENCHMARKS.md", s.figure))
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("not every figure was produced:\n  %s", strings.Join(problems, "\n  "))
	}
	where := ""
	if h.opts.smoke && h.opts.outDir == "" && !h.opts.keep {
		where = " (a temporary directory, removed now; --keep keeps it)"
	}
	logf("every figure produced: %s and %d PNGs under %s%s", filepath.Join(h.outDir, "BENCHMARKS.md"), len(h.sections), h.docsDir, where)
	return nil
}

func (h *harness) cleanup() {
	if h.work == "" {
		return
	}
	if h.opts.keep {
		logf("kept %s", h.work)
		return
	}
	_ = os.RemoveAll(h.work)
}

// killsPerServer is how many workers a figure kills on one hourglassd
// before starting a fresh one: one fewer than the executor's crash-loop
// threshold (5 deaths of a slot's worker within 30 s hold the slot back
// for 1 s and more), so that the figures measure the kill and respawn
// path, not the crash-loop policy.
const killsPerServer = 4

// pick returns smoke when running the smoke test, else full.
func pick[T any](h *harness, full, smoke T) T {
	if h.opts.smoke {
		return smoke
	}
	return full
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// sleepCtx sleeps d unless the run is interrupted.
func (h *harness) sleepCtx(d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-h.ctx.Done():
		return h.ctx.Err()
	}
}

// numCPU is the CPUs this process may use.
func numCPU() int { return runtime.GOMAXPROCS(0) }
