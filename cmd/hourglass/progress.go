package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// progress shows the life of a streamed job on stderr. stdout is kept for
// results (file paths, JSON) so that scripts can capture it alone.
type progress interface {
	queued(position uint32)
	started(workerID string, seed uint64)
	step(p *hourglassv1.GenerateEvent_Progress)
	image(img *hourglassv1.Image)
	// preview reports a preview; path is where it was written, empty when
	// it was not.
	preview(p *hourglassv1.Preview, path string)
	done(stats *hourglassv1.GenerateStats)
	// retrying reports that the job failed with err before its first
	// image and starts again, as attempt, with the same seed: its events
	// (queued, started, progress from the first step) follow.
	retrying(attempt int, err error)
	// finish ends any partly drawn line; it is safe to call more than once.
	finish()
}

// newProgress picks the redrawn single-line display when w is a terminal
// and plain, throttled lines otherwise (logs, CI, pipes). images is the
// number of images requested, 0 when the server default applies.
func newProgress(w io.Writer, images uint32) progress {
	if isTerminal(w) {
		return &ttyProgress{w: w, images: images}
	}
	return &lineProgress{w: w, images: images, lastBucket: -1}
}

// isTerminal reports whether w is a character device, such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// imageLabel is "image 2/4" (1-based), or "image 2" when the total is the
// server's default and so not known here.
func imageLabel(index, total uint32) string {
	if total > 0 {
		return fmt.Sprintf("image %d/%d", index+1, total)
	}
	return fmt.Sprintf("image %d", index+1)
}

// summary is the closing line of a job in both displays.
func summary(s *hourglassv1.GenerateStats) string {
	return fmt.Sprintf("done: %d/%d steps on worker %s, seed %d, queue wait %v, run time %v",
		s.GetStepsDone(), s.GetStepsTotal(), s.GetWorkerId(), s.GetSeed(),
		s.GetQueueWait().AsDuration(), s.GetRunTime().AsDuration())
}

// failureSummary is "UNAVAILABLE: message (REASON)", for a failure the
// client retries.
func failureSummary(err error) string {
	st := statusOf(err)
	line := codeName(st.Code()) + ": " + st.Message()
	if r := client.Reason(err); r != "" {
		line += " (" + r + ")"
	}
	return line
}

// lineProgress writes one line per event, progress only when it crosses a
// 10% mark, so that a 150-step job leaves about ten lines in a log.
type lineProgress struct {
	w          io.Writer
	images     uint32
	lastBucket int
	lastQueue  int64
	seenQueue  bool
}

func (p *lineProgress) queued(position uint32) {
	// Positions repeat while a job waits; print only changes.
	if p.seenQueue && p.lastQueue == int64(position) {
		return
	}
	p.seenQueue, p.lastQueue = true, int64(position)
	fmt.Fprintf(p.w, "queued: position %d\n", position)
}

func (p *lineProgress) started(workerID string, seed uint64) {
	fmt.Fprintf(p.w, "started: worker %s, seed %d\n", workerID, seed)
}

func (p *lineProgress) step(e *hourglassv1.GenerateEvent_Progress) {
	bucket := int(e.GetPercent()) / 10
	if bucket <= p.lastBucket {
		return
	}
	p.lastBucket = bucket
	fmt.Fprintf(p.w, "progress: %3.0f%% (%s, step %d/%d)\n",
		e.GetPercent(), imageLabel(e.GetImageIndex(), p.images), e.GetStep(), e.GetTotalSteps())
}

func (p *lineProgress) image(img *hourglassv1.Image) {
	fmt.Fprintf(p.w, "image: %s, seed %d, %dx%d %s, %d bytes\n",
		imageLabel(img.GetIndex(), p.images), img.GetSeed(), img.GetWidth(), img.GetHeight(),
		img.GetMimeType(), len(img.GetData()))
}

// preview writes one line per preview: the caller chose how often they
// come with --preview-every.
func (p *lineProgress) preview(pv *hourglassv1.Preview, path string) {
	line := fmt.Sprintf("preview: %s, step %d, %dx%d", imageLabel(pv.GetImageIndex(), p.images), pv.GetStep(), pv.GetWidth(), pv.GetHeight())
	if path != "" {
		line += ", saved as " + path
	}
	fmt.Fprintln(p.w, line)
}

func (p *lineProgress) done(s *hourglassv1.GenerateStats) {
	fmt.Fprintln(p.w, summary(s))
}

func (p *lineProgress) retrying(attempt int, err error) {
	fmt.Fprintf(p.w, "retrying: attempt %d, after %s\n", attempt, failureSummary(err))
	// The new attempt's queue positions and progress start over.
	p.lastBucket, p.seenQueue = -1, false
}

func (p *lineProgress) finish() {}

// ttyProgress redraws one status line with a bar; it ends the line before
// anything else is printed.
type ttyProgress struct {
	w      io.Writer
	images uint32
	drawn  bool
}

// barWidth is the number of cells of the progress bar.
const barWidth = 30

func (p *ttyProgress) redraw(line string) {
	// \r returns to the start of the line, ESC[K clears the rest of it.
	fmt.Fprintf(p.w, "\r\x1b[K%s", line)
	p.drawn = true
}

func (p *ttyProgress) queued(position uint32) {
	p.redraw(fmt.Sprintf("queued, position %d", position))
}

func (p *ttyProgress) started(workerID string, seed uint64) {
	p.redraw(fmt.Sprintf("started on worker %s, seed %d", workerID, seed))
}

func (p *ttyProgress) step(e *hourglassv1.GenerateEvent_Progress) {
	p.redraw(fmt.Sprintf("%s %3.0f%% %s, step %d/%d", bar(e.GetPercent(), barWidth),
		e.GetPercent(), imageLabel(e.GetImageIndex(), p.images), e.GetStep(), e.GetTotalSteps()))
}

func (p *ttyProgress) image(*hourglassv1.Image) {}

// preview shows nothing on a terminal: the status line already tracks the
// steps, and saved previews are where --preview-dir says.
func (p *ttyProgress) preview(*hourglassv1.Preview, string) {}

func (p *ttyProgress) done(s *hourglassv1.GenerateStats) {
	p.finish()
	fmt.Fprintln(p.w, summary(s))
}

// retrying leaves a line behind: a bar that starts over would otherwise
// look like a glitch.
func (p *ttyProgress) retrying(attempt int, err error) {
	p.finish()
	fmt.Fprintf(p.w, "retrying: attempt %d, after %s\n", attempt, failureSummary(err))
}

func (p *ttyProgress) finish() {
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.drawn = false
	}
}

// bar renders percent (clamped to 0..100) as "[#####-----]" of width cells.
func bar(percent float32, width int) string {
	if percent != percent { // NaN from a misbehaving server
		percent = 0
	}
	percent = min(max(percent, 0), 100)
	full := int(percent / 100 * float32(width))
	return "[" + strings.Repeat("#", full) + strings.Repeat("-", width-full) + "]"
}
