package main

import (
	"fmt"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// The palette: the baseline in grey, hourglass in blue, the naive pool in
// red, extra series in orange and green.
var (
	colBaseline  = color.RGBA{R: 128, G: 128, B: 128, A: 255}
	colHourglass = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	colNaive     = color.RGBA{R: 214, G: 39, B: 40, A: 255}
	colOrange    = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	colGreen     = color.RGBA{R: 44, G: 160, B: 44, A: 255}
	colPurple    = color.RGBA{R: 148, G: 103, B: 189, A: 255}
	colRef       = color.RGBA{R: 60, G: 60, B: 60, A: 255}
)

var dashes = []vg.Length{vg.Points(5), vg.Points(3)}

// newPlot is a plot with a title, axis labels, a grid and the legend at the
// top left.
func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(10)
	p.X.Tick.Marker = cleanTicks{}
	p.Y.Tick.Marker = cleanTicks{}
	grid := plotter.NewGrid()
	grid.Vertical.Color = color.Gray{Y: 225}
	grid.Horizontal.Color = color.Gray{Y: 225}
	p.Add(grid)
	return p
}

// logY makes the y axis logarithmic with readable ticks.
func logY(p *plot.Plot) {
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = readableLogTicks{}
}

func logX(p *plot.Plot) {
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = readableLogTicks{}
}

// cleanTicks are gonum's default linear ticks labelled without trailing
// zeros ("25", not "25.00").
type cleanTicks struct{}

func (cleanTicks) Ticks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'g', 6, 64)
		}
	}
	return ticks
}

// readableLogTicks labels 1, 2, 5 × powers of ten.
type readableLogTicks struct{}

func (readableLogTicks) Ticks(min, max float64) []plot.Tick {
	var ticks []plot.Tick
	lo := math.Floor(math.Log10(min))
	hi := math.Ceil(math.Log10(max))
	for e := lo; e <= hi; e++ {
		base := math.Pow(10, e)
		for _, m := range []float64{1, 2, 3, 4, 5, 6, 7, 8, 9} {
			v := m * base
			if v < min*0.999 || v > max*1.001 {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = trimFloat(v)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

func trimFloat(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e4:
		return fmt.Sprintf("%gk", v/1e3)
	default:
		return fmt.Sprintf("%g", v)
	}
}

// line adds a line with points, in a color and optional dash, with a legend.
func line(p *plot.Plot, name string, xys plotter.XYs, c color.Color, dashed bool, shape int) error {
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(2)
	if dashed {
		l.Dashes = dashes
	}
	s.Color = c
	s.Radius = vg.Points(3.5)
	s.Shape = shapes[shape%len(shapes)]
	p.Add(l, s)
	if name != "" {
		p.Legend.Add(name, l, s)
	}
	return nil
}

var shapes = []draw.GlyphDrawer{draw.CircleGlyph{}, draw.SquareGlyph{}, draw.TriangleGlyph{}, draw.PlusGlyph{}, draw.CrossGlyph{}, draw.RingGlyph{}}

// dashedLine adds a dashed line without points, with a legend.
func dashedLine(p *plot.Plot, name string, xys plotter.XYs, c color.Color) error {
	l, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(1.5)
	l.Dashes = dashes
	p.Add(l)
	p.Legend.Add(name, l)
	return nil
}

// hline draws a horizontal reference from x0 to x1 at y, labelled.
func hline(p *plot.Plot, y, x0, x1 float64, label string, c color.Color) error {
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(1.2)
	l.Dashes = dashes
	p.Add(l)
	if label != "" {
		return text(p, x0, y, label, c, vg.Points(9), -vg.Points(13))
	}
	return nil
}

// text writes a label at (x, y), right of the point and dy above it.
func text(p *plot.Plot, x, y float64, s string, c color.Color, size, dy vg.Length) error {
	lb, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: x, Y: y}}, Labels: []string{s}})
	if err != nil {
		return err
	}
	for i := range lb.TextStyle {
		lb.TextStyle[i].Color = c
		lb.TextStyle[i].Font.Size = size
	}
	lb.Offset = vg.Point{X: vg.Points(2), Y: vg.Points(2) + dy}
	p.Add(lb)
	return nil
}

// strip draws each sample of one category as a jittered dot around x, with
// its p50 (thick) and p99 (thin) as short bars, labelled on the right.
func strip(p *plot.Plot, x float64, ys []float64, c color.Color, seed uint64) error {
	if len(ys) == 0 {
		return nil
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	pts := make(plotter.XYs, len(ys))
	for i, y := range ys {
		pts[i] = plotter.XY{X: x + (rng.Float64()-0.5)*0.3, Y: y}
	}
	s, err := plotter.NewScatter(pts)
	if err != nil {
		return err
	}
	s.Color = withAlpha(c, 150)
	s.Radius = vg.Points(2.5)
	s.Shape = draw.CircleGlyph{}
	p.Add(s)
	p50, p99 := quantile(ys, 0.5), quantile(ys, 0.99)
	for _, q := range []struct {
		v     float64
		width vg.Length
	}{{p50, vg.Points(3)}, {p99, vg.Points(1.5)}} {
		l, err := plotter.NewLine(plotter.XYs{{X: x - 0.25, Y: q.v}, {X: x + 0.25, Y: q.v}})
		if err != nil {
			return err
		}
		l.Color = c
		l.Width = q.width
		p.Add(l)
	}
	if math.Abs(p99-p50) <= 0.25*math.Abs(p50) {
		return text(p, x+0.27, p50, fmt.Sprintf("p50 %s\np99 %s", fmtMs(p50), fmtMs(p99)), c, vg.Points(9), 0)
	}
	if err := text(p, x+0.27, p50, "p50 "+fmtMs(p50), c, vg.Points(9), 0); err != nil {
		return err
	}
	return text(p, x+0.27, p99, "p99 "+fmtMs(p99), c, vg.Points(9), 0)
}

func withAlpha(c color.Color, a uint8) color.Color {
	r, g, b, _ := c.RGBA()
	return color.NRGBA{R: uint8(r >> 8), G: uint8(g >> 8), B: uint8(b >> 8), A: a}
}

// bars adds a bar chart of vals at offset (for grouped bars), with a legend.
func bars(p *plot.Plot, name string, vals []float64, c color.Color, width, offset vg.Length) (*plotter.BarChart, error) {
	b, err := plotter.NewBarChart(plotter.Values(vals), width)
	if err != nil {
		return nil, err
	}
	b.Color = c
	b.LineStyle.Width = 0
	b.Offset = offset
	p.Add(b)
	p.Legend.Add(name, b)
	return b, nil
}

// savePNG lays plots out side by side and writes one PNG.
func (h *harness) savePNG(name string, w, ht vg.Length, plots ...*plot.Plot) error {
	img := vgimg.NewWith(vgimg.UseWH(w, ht), vgimg.UseDPI(110), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: len(plots),
		PadX: vg.Millimeter * 8, PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3,
		PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 4}
	for i, p := range plots {
		p.Draw(tiles.At(dc, i, 0))
	}
	f, err := os.Create(filepath.Join(h.docsDir, name))
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
