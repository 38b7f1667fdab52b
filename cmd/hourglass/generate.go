package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hourglass-dev/hourglass/client"
	hourglassv1 "github.com/hourglass-dev/hourglass/gen/hourglass/v1"
)

// defaultGenerateTimeout bounds a generate call when --timeout is not given.
// It is shorter than the server's default (60 s) on purpose: an interactive
// user who waits longer should say so.
const defaultGenerateTimeout = 30 * time.Second

// generateConfig is a parsed generate command line.
type generateConfig struct {
	conn   connFlags
	req    *hourglassv1.GenerateRequest
	output string // -o; empty names files by seed
	json   bool
	// previewDir is --preview-dir: where previews are written; empty
	// writes none.
	previewDir string
}

// performances maps --performance values to the proto enum.
var performances = map[string]hourglassv1.Performance{
	"speed":         hourglassv1.Performance_PERFORMANCE_SPEED,
	"quality":       hourglassv1.Performance_PERFORMANCE_QUALITY,
	"extreme-speed": hourglassv1.Performance_PERFORMANCE_EXTREME_SPEED,
	"lightning":     hourglassv1.Performance_PERFORMANCE_LIGHTNING,
}

// formats maps --format values to the proto enum.
var formats = map[string]hourglassv1.OutputFormat{
	"png":  hourglassv1.OutputFormat_OUTPUT_FORMAT_PNG,
	"jpeg": hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG,
	"jpg":  hourglassv1.OutputFormat_OUTPUT_FORMAT_JPEG,
}

// parsePerformance accepts the Fooocus preset names, case-insensitively, and
// "_" for "-" (the proto spelling).
func parsePerformance(s string) (hourglassv1.Performance, error) {
	p, ok := performances[strings.ReplaceAll(strings.ToLower(s), "_", "-")]
	if !ok {
		return 0, usagef("--performance must be speed, quality, extreme-speed or lightning, got %q", s)
	}
	return p, nil
}

func parseFormat(s string) (hourglassv1.OutputFormat, error) {
	f, ok := formats[strings.ToLower(s)]
	if !ok {
		return 0, usagef("--format must be png or jpeg, got %q", s)
	}
	return f, nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// uint32Value is a flag that refuses values a uint32 proto field cannot hold,
// rather than silently truncating them.
type uint32Value uint32

func (v *uint32Value) String() string { return strconv.FormatUint(uint64(*v), 10) }
func (v *uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("must be a whole number from 0 to 4294967295")
	}
	*v = uint32Value(n)
	return nil
}

// float32Value is a float flag for float proto fields.
type float32Value float32

func (v *float32Value) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 32) }
func (v *float32Value) Set(s string) error {
	f, err := strconv.ParseFloat(s, 32)
	if err != nil {
		return errors.New("must be a number")
	}
	*v = float32Value(f)
	return nil
}

// parseGenerateArgs turns the generate command line into a request. Optional
// proto fields are set only for flags that were given, so that the server's
// defaults apply to the others; a flag's zero value is not "unset".
func parseGenerateArgs(args []string, out io.Writer) (*generateConfig, error) {
	fs := flag.NewFlagSet("generate", flag.ContinueOnError)
	fs.SetOutput(out)
	var (
		cfg                         generateConfig
		prompt, negative, model     string
		perf, format                string
		styles                      stringList
		width, height, steps, count uint32Value
		previewEvery                uint32Value
		seed                        uint64
		guidance, sharpness         float32Value
	)
	cfg.conn.register(fs, defaultGenerateTimeout)
	fs.StringVar(&prompt, "prompt", "", "`TEXT` to draw (required)")
	fs.StringVar(&negative, "negative-prompt", "", "`TEXT` to steer away from")
	fs.Var(&styles, "style", "style `NAME`, applied in order; repeatable (see hourglass info)")
	fs.StringVar(&perf, "performance", "", "`PRESET` of steps: speed (30), quality (60), extreme-speed (8), lightning (4); server default speed")
	fs.Var(&width, "width", "image width `N` in pixels, a multiple of 8 in 64..2048; server default 512")
	fs.Var(&height, "height", "image height `N` in pixels, a multiple of 8 in 64..2048; server default 512")
	fs.Var(&steps, "steps", "sampling steps `N`, 1..150; overrides --performance")
	fs.Var(&count, "count", "`N` images, 1..32; server default 1")
	fs.Uint64Var(&seed, "seed", 0, "`SEED` of the first image (image i uses seed+i); default random, fixed before the first try so that a retry makes the same images")
	fs.Var(&guidance, "guidance", "classifier-free guidance `F`, 1..30; server default 4")
	fs.Var(&sharpness, "sharpness", "sharpness `F`, 0..30; server default 2")
	fs.StringVar(&model, "model", "", "model `NAME`; server default model when empty (see hourglass info)")
	fs.StringVar(&format, "format", "", "image `FORMAT`: png or jpeg; server default png")
	fs.StringVar(&cfg.output, "o", "", "output `FILE`; several images become FILE-0.png, FILE-1.png, ... (default hourglass-SEED.png)")
	fs.StringVar(&cfg.output, "output", "", "same as -o `FILE`")
	fs.Var(&previewEvery, "preview-every", "ask for a small JPEG preview of the image being sampled every `N` steps (0, the default, asks for none); previews are shown as progress lines, and saved with --preview-dir")
	fs.StringVar(&cfg.previewDir, "preview-dir", "", "write previews to `DIR` as preview-IMAGE-STEP.jpg (IMAGE from 0), creating DIR if needed; needs --preview-every")
	fs.BoolVar(&cfg.json, "json", false, "print the job's stats and files as one JSON object on stdout (protojson conventions: 64-bit integers as strings)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: hourglass generate --prompt TEXT [flags]\n\nRun a text-to-image job, show its progress on stderr, save its images\nand print their paths on stdout.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, errHelp
		}
		return nil, &usageError{msg: "generate: " + err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, usagef("generate: unexpected argument %q (quote the prompt: --prompt \"...\")", fs.Arg(0))
	}
	if err := cfg.conn.check(); err != nil {
		return nil, err
	}
	if prompt == "" {
		return nil, usagef("generate: --prompt is required")
	}
	if cfg.previewDir != "" && previewEvery == 0 {
		return nil, usagef("generate: --preview-dir needs --preview-every N with N > 0")
	}
	req := &hourglassv1.GenerateRequest{
		Prompt:             prompt,
		NegativePrompt:     negative,
		Styles:             styles,
		Model:              model,
		PreviewEveryNSteps: uint32(previewEvery),
	}
	var err error
	if format != "" {
		if req.OutputFormat, err = parseFormat(format); err != nil {
			return nil, err
		}
	}
	if perf != "" {
		if req.Performance, err = parsePerformance(perf); err != nil {
			return nil, err
		}
	}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "width":
			req.Width = proto.Uint32(uint32(width))
		case "height":
			req.Height = proto.Uint32(uint32(height))
		case "steps":
			req.Steps = proto.Uint32(uint32(steps))
		case "count":
			req.ImageCount = proto.Uint32(uint32(count))
		case "seed":
			req.Seed = proto.Uint64(seed)
		case "guidance":
			req.GuidanceScale = proto.Float32(float32(guidance))
		case "sharpness":
			req.Sharpness = proto.Float32(float32(sharpness))
		}
	})
	cfg.req = req
	return &cfg, nil
}

// runGenerate is the generate subcommand.
func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseGenerateArgs(args, stderr)
	if err != nil {
		return err
	}
	var previews *previewSaver
	if cfg.previewDir != "" {
		// Before the job: a directory that cannot be made is a local
		// mistake, better reported before the server spends time on it.
		if previews, err = newPreviewSaver(cfg.previewDir); err != nil {
			return err
		}
	}
	prog := newProgress(stderr, cfg.req.GetImageCount())
	defer prog.finish()
	c, err := cfg.conn.connectAll(client.OnStreamRetry(prog.retrying))
	if err != nil {
		return err
	}
	defer c.Close()

	ctx, cancel := cfg.conn.callContext(ctx)
	defer cancel()
	out := newImageSaver(cfg.output)
	defer out.discard()

	stats, err := generate(ctx, c, cfg.req, prog, out, previews)
	if err != nil {
		return err
	}
	prog.finish()
	files, err := out.commit()
	for _, f := range files {
		fmt.Fprintln(stdout, f)
	}
	if err != nil {
		return err
	}
	if cfg.json {
		return printStatsJSON(stdout, stats, files)
	}
	return nil
}

// generate runs one streamed job: it reports each event to prog, hands each
// image to out as it arrives, writes each preview with previews (when it is
// not nil) and returns the stats of the done event. The call's deadline is
// ctx's. The client fixes the seed before the first try and starts the job
// again, with that seed, when it fails UNAVAILABLE before its first image
// (prog.retrying reports it); no image can come from a failed try.
func generate(ctx context.Context, c *client.Client, req *hourglassv1.GenerateRequest, prog progress, out *imageSaver, previews *previewSaver) (*hourglassv1.GenerateStats, error) {
	for ev, err := range c.GenerateStream(ctx, req) {
		if err != nil {
			return nil, err
		}
		switch e := ev.GetEvent().(type) {
		case *hourglassv1.GenerateEvent_Queued_:
			prog.queued(e.Queued.GetPosition())
		case *hourglassv1.GenerateEvent_Started_:
			prog.started(e.Started.GetWorkerId(), e.Started.GetSeed())
		case *hourglassv1.GenerateEvent_Progress_:
			prog.step(e.Progress)
		case *hourglassv1.GenerateEvent_Preview:
			path := ""
			if previews != nil {
				if path, err = previews.save(e.Preview); err != nil {
					return nil, err
				}
			}
			prog.preview(e.Preview, path)
		case *hourglassv1.GenerateEvent_Image:
			prog.image(e.Image)
			if err := out.add(e.Image); err != nil {
				return nil, err
			}
		case *hourglassv1.GenerateEvent_Done_:
			stats := e.Done.GetStats()
			prog.done(stats)
			return stats, nil
		}
		// Unknown events (a newer server) are ignored.
	}
	// GenerateStream ends after done or with an error.
	return nil, status.Error(codes.Internal, "the stream ended without a done event or an error")
}

// printStatsJSON prints the stats with the proto field names and protojson
// encodings (durations as "1.500s", 64-bit integers as strings, so that a
// seed survives JSON parsers that read numbers as doubles), plus the files.
func printStatsJSON(w io.Writer, stats *hourglassv1.GenerateStats, files []string) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(stats)
	if err != nil {
		return localf("encode stats: %v", err)
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(b, &obj); err != nil {
		return localf("encode stats: %v", err)
	}
	if files == nil {
		files = []string{}
	}
	if obj["files"], err = json.Marshal(files); err != nil {
		return localf("encode stats: %v", err)
	}
	// encoding/json sorts the keys and compacts protojson's deliberately
	// unstable whitespace, so the line is stable.
	b, err = json.Marshal(obj)
	if err != nil {
		return localf("encode stats: %v", err)
	}
	if _, err := fmt.Fprintf(w, "%s\n", b); err != nil {
		return &localError{err: err}
	}
	return nil
}
