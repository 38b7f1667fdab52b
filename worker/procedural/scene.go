package procedural

import (
	"context"
	"hash/fnv"
	"math"
	"strings"
	"unicode"
)

// rgb is a colour with channels in 0..1.
type rgb [3]float32

func (c rgb) lerp(d rgb, t float32) rgb {
	return rgb{c[0] + (d[0]-c[0])*t, c[1] + (d[1]-c[1])*t, c[2] + (d[2]-c[2])*t}
}

func (c rgb) clamp() rgb {
	for i := range c {
		c[i] = clamp01(c[i])
	}
	return c
}

func clamp01(v float32) float32 {
	// Branches rather than min(max(v, 0), 1): the builtins must order
	// NaN and signed zeros, which costs several instructions on the
	// sampler's hottest paths. NaN still passes through either way.
	if v < 0 {
		return 0
	}
	if v > 1 {
		return 1
	}
	return v
}

// hsv converts hue (turns), saturation and value to rgb.
func hsv(h, s, v float32) rgb {
	h -= float32(math.Floor(float64(h)))
	h6 := h * 6
	i := int(h6) % 6
	f := h6 - float32(int(h6))
	p, q, t := v*(1-s), v*(1-s*f), v*(1-s*(1-f))
	switch i {
	case 0:
		return rgb{v, t, p}
	case 1:
		return rgb{q, v, p}
	case 2:
		return rgb{p, v, t}
	case 3:
		return rgb{p, q, v}
	case 4:
		return rgb{t, p, v}
	default:
		return rgb{v, p, q}
	}
}

// colourWords give prompts that name a colour (or something with an obvious
// one) that colour, so "a red apple" comes out red, not a hashed hue.
var colourWords = map[string]rgb{
	"red":     {0.86, 0.12, 0.12},
	"orange":  {0.96, 0.52, 0.10},
	"yellow":  {0.96, 0.86, 0.18},
	"gold":    {0.85, 0.68, 0.20},
	"green":   {0.18, 0.68, 0.25},
	"forest":  {0.10, 0.40, 0.16},
	"grass":   {0.35, 0.70, 0.22},
	"blue":    {0.15, 0.32, 0.86},
	"ocean":   {0.05, 0.32, 0.58},
	"sea":     {0.08, 0.40, 0.62},
	"sky":     {0.50, 0.74, 0.95},
	"cyan":    {0.15, 0.82, 0.86},
	"teal":    {0.08, 0.55, 0.55},
	"purple":  {0.52, 0.20, 0.70},
	"violet":  {0.58, 0.35, 0.85},
	"magenta": {0.86, 0.15, 0.70},
	"pink":    {0.95, 0.55, 0.72},
	"brown":   {0.45, 0.28, 0.14},
	"sand":    {0.86, 0.76, 0.52},
	"desert":  {0.88, 0.68, 0.42},
	"white":   {0.95, 0.95, 0.95},
	"snow":    {0.92, 0.95, 1.00},
	"silver":  {0.75, 0.76, 0.80},
	"gray":    {0.50, 0.50, 0.52},
	"grey":    {0.50, 0.50, 0.52},
	"black":   {0.06, 0.06, 0.07},
	"night":   {0.05, 0.07, 0.22},
	"fire":    {0.95, 0.35, 0.08},
	"sunset":  {0.98, 0.45, 0.30},
}

// stopWords carry no picture of their own.
var stopWords = map[string]bool{
	"a": true, "an": true, "the": true, "of": true, "and": true, "with": true,
	"in": true, "on": true, "at": true, "to": true, "by": true, "for": true,
	"from": true, "is": true, "are": true, "very": true,
}

// words splits a prompt into lower-case words, dropping punctuation.
func words(prompt string) []string {
	return strings.FieldsFunc(strings.ToLower(prompt), func(r rune) bool {
		return !unicode.IsLetter(r) && !unicode.IsDigit(r)
	})
}

func hashString(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// mix is splitmix64's finaliser: it spreads one hash into independent-looking
// values, mix(h+1), mix(h+2), …
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

// unit maps a hash to 0..1.
func unit(h uint64) float32 { return float32(h>>40) / (1 << 24) }

// shapeKind is what an element draws.
type shapeKind int

const (
	shapeBlob shapeKind = iota // soft disc
	shapeRing                  // soft ring
	shapeWave                  // sine bands across the image
	shapeBand                  // one soft straight stripe
	numShapes
)

// element is one shape, derived from one prompt word.
type element struct {
	kind   shapeKind
	colour rgb
	// Centre in 0..1 image coordinates, radius relative to the shorter side.
	cx, cy, radius float32
	angle, freq    float32
	opacity        float32
	hash           uint64 // seeds the per-image jitter
}

// maxElements bounds the shapes per image, which bounds the cost of
// rendering the target however long the prompt is.
const maxElements = 12

// scene is everything about a picture that depends on the job's text and
// settings but not on its seed.
type scene struct {
	background [2]rgb
	bgAngle    float32
	elements   []element
	contrast   float32 // from guidance_scale; 1 at the default of 4
	sharpen    float32 // unsharp-mask amount, from sharpness and styles
	looks      []look
}

// newScene derives a scene from the job text. Words become shapes, colour
// words set the palette, negative words push colours and shapes away.
func newScene(prompt, negative string, guidance, sharpness float32, looks []look) scene {
	var content []string
	for _, w := range words(prompt) {
		if !stopWords[w] {
			content = append(content, w)
		}
	}
	h0 := hashString(strings.Join(content, " "))

	// Palette: named colours first, then a scheme around a hashed hue.
	var palette []rgb
	for _, w := range content {
		if c, ok := colourWords[w]; ok {
			palette = append(palette, c)
		}
	}
	baseHue := unit(mix(h0))
	offsets := [][]float32{
		{0, 0.08, -0.08, 0.16, 0.5},   // analogous
		{0, 0.5, 0.04, 0.54, 0.25},    // complementary
		{0, 0.333, 0.667, 0.05, 0.38}, // triadic
	}[mix(h0+1)%3]
	for i, off := range offsets {
		s := 0.45 + 0.5*unit(mix(h0+10+uint64(i)))
		v := 0.45 + 0.5*unit(mix(h0+20+uint64(i)))
		palette = append(palette, hsv(baseHue+off, s, v))
	}

	// Negative prompt: colours to avoid and shapes to play down.
	var avoid []rgb
	var avoidShape [numShapes]bool
	for _, w := range words(negative) {
		if stopWords[w] {
			continue
		}
		hw := hashString(w)
		if c, ok := colourWords[w]; ok {
			avoid = append(avoid, c)
		} else {
			avoid = append(avoid, hsv(unit(mix(hw)), 0.8, 0.8))
		}
		avoidShape[mix(hw+3)%uint64(numShapes)] = true
	}
	for i := range palette {
		palette[i] = pushAway(palette[i], avoid)
	}

	sc := scene{
		background: [2]rgb{
			palette[len(palette)-1].lerp(rgb{}, 0.55),
			palette[len(palette)-2].lerp(rgb{1, 1, 1}, 0.25),
		},
		bgAngle:  unit(mix(h0+2)) * 2 * math.Pi,
		contrast: 0.6 + 0.1*guidance,
		sharpen:  sharpness / 10,
		looks:    looks,
	}
	for _, l := range looks {
		sc.sharpen += l.sharpen
	}

	// Words beyond maxElements fold into the existing shapes' hashes, so
	// every word still changes the picture.
	hashes := make([]uint64, min(len(content), maxElements))
	for i, w := range content {
		hashes[i%maxElements] = mix(hashes[i%maxElements] ^ hashString(w))
	}
	for i, hw := range hashes {
		e := element{
			kind:    shapeKind(mix(hw+1) % uint64(numShapes)),
			colour:  palette[i%len(palette)],
			cx:      0.1 + 0.8*unit(mix(hw+2)),
			cy:      0.1 + 0.8*unit(mix(hw+3)),
			radius:  0.12 + 0.3*unit(mix(hw+4)),
			angle:   unit(mix(hw+5)) * math.Pi,
			freq:    2 + 10*unit(mix(hw+6)),
			opacity: 0.55 + 0.4*unit(mix(hw+7)),
			hash:    hw,
		}
		if avoidShape[e.kind] {
			e.opacity *= 0.35
		}
		sc.elements = append(sc.elements, e)
	}
	return sc
}

// pushAway moves c away from each colour in avoid that lies close to it.
func pushAway(c rgb, avoid []rgb) rgb {
	const reach = 0.6
	for _, a := range avoid {
		d := rgb{c[0] - a[0], c[1] - a[1], c[2] - a[2]}
		dist := float32(math.Sqrt(float64(d[0]*d[0] + d[1]*d[1] + d[2]*d[2])))
		if dist >= reach {
			continue
		}
		if dist < 1e-3 {
			// On top of the avoided colour: go to its complement.
			d, dist = rgb{0.5 - a[0], 0.5 - a[1], 0.5 - a[2]}, 0.5
		}
		k := (reach - dist) / dist
		c = rgb{c[0] + d[0]*k, c[1] + d[1]*k, c[2] + d[2]*k}.clamp()
	}
	return c
}

// render draws the scene for one image into target (w×h×3, RGB rows). The
// seed jitters the shapes, so that images of one job are variations of one
// composition, as with a diffusion model.
//
// At 2048×2048 rendering takes a few hundred milliseconds, so it checks ctx
// between passes: a job cancelled before its first step stops within one
// pass, not after the whole render.
func (sc *scene) render(ctx context.Context, target []float32, w, h int, seed uint64) error {
	// Background gradient along bgAngle.
	cosA, sinA := float32(math.Cos(float64(sc.bgAngle))), float32(math.Sin(float64(sc.bgAngle)))
	fw, fh := float32(w), float32(h)
	for y := range h {
		for x := range w {
			t := clamp01(0.5 + ((float32(x)/fw-0.5)*cosA+(float32(y)/fh-0.5)*sinA)*0.9)
			c := sc.background[0].lerp(sc.background[1], t)
			i := (y*w + x) * 3
			target[i], target[i+1], target[i+2] = c[0], c[1], c[2]
		}
	}

	side := float32(min(w, h))
	for _, e := range sc.elements {
		j := mix(e.hash ^ seed)
		e.cx += (unit(mix(j+1)) - 0.5) * 0.16
		e.cy += (unit(mix(j+2)) - 0.5) * 0.16
		e.angle += (unit(mix(j+3)) - 0.5) * 0.5
		e.radius *= 0.85 + 0.3*unit(mix(j+4))
		if err := ctx.Err(); err != nil {
			return err
		}
		drawElement(target, w, h, side, e)
	}

	applyContrast(target, sc.contrast)
	for _, l := range sc.looks {
		if err := ctx.Err(); err != nil {
			return err
		}
		l.apply(target, w, h)
	}
	if sc.sharpen > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		unsharp(target, w, h, sc.sharpen)
	}
	for i, v := range target {
		target[i] = clamp01(v)
	}
	return ctx.Err()
}

func drawElement(target []float32, w, h int, side float32, e element) {
	cx, cy, r := e.cx*float32(w), e.cy*float32(h), e.radius*side
	cosA, sinA := float32(math.Cos(float64(e.angle))), float32(math.Sin(float64(e.angle)))
	blend := func(x, y int, a float32) {
		a *= e.opacity
		i := (y*w + x) * 3
		for c := range 3 {
			target[i+c] += (e.colour[c] - target[i+c]) * a
		}
	}
	switch e.kind {
	case shapeBlob, shapeRing:
		// Compact support: only the bounding box is touched.
		x0, x1 := max(int(cx-r), 0), min(int(cx+r)+1, w)
		y0, y1 := max(int(cy-r), 0), min(int(cy+r)+1, h)
		inv := 1 / (r * r)
		for y := y0; y < y1; y++ {
			dy := float32(y) - cy
			for x := x0; x < x1; x++ {
				dx := float32(x) - cx
				d2 := (dx*dx + dy*dy) * inv
				if d2 >= 1 {
					continue
				}
				var a float32
				if e.kind == shapeBlob {
					a = (1 - d2) * (1 - d2)
				} else {
					d := float32(math.Sqrt(float64(d2)))
					a = max(0, 1-abs(d-0.72)/0.16)
					a *= a
				}
				blend(x, y, a)
			}
		}
	case shapeWave:
		k := e.freq * 2 * math.Pi / side
		for y := range h {
			for x := range w {
				u := (float32(x)-cx)*cosA + (float32(y)-cy)*sinA
				s := float32(math.Sin(float64(u * k)))
				if s > 0 {
					blend(x, y, 0.7*s*s)
				}
			}
		}
	case shapeBand:
		half := r * 0.5
		for y := range h {
			for x := range w {
				u := abs((float32(x)-cx)*-sinA + (float32(y)-cy)*cosA)
				if u < half {
					a := 1 - u/half
					blend(x, y, a*a)
				}
			}
		}
	}
}

func abs(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}

// applyContrast scales each channel away from its mean: guidance pulls the
// picture harder toward the prompt, which reads as more contrast.
func applyContrast(img []float32, k float32) {
	if k == 1 {
		return
	}
	var sum [3]float64
	for i := 0; i+2 < len(img); i += 3 {
		sum[0] += float64(img[i])
		sum[1] += float64(img[i+1])
		sum[2] += float64(img[i+2])
	}
	n := float64(len(img) / 3)
	mean := [3]float32{float32(sum[0] / n), float32(sum[1] / n), float32(sum[2] / n)}
	for i := range img {
		c := i % 3
		img[i] = mean[c] + (img[i]-mean[c])*k
	}
}

// unsharp adds amount × (img − blur(img)), with a 3×3 box blur, which
// emphasises edges the way Fooocus's sharpness does. The blur is separable:
// a horizontal pass into scratch, then the vertical pass, which reads only
// the scratch and so can write the sharpened value straight back into img.
func unsharp(img []float32, w, h int, amount float32) {
	tmpBuf := getFloats(len(img))
	defer putFloats(tmpBuf)
	tmp := *tmpBuf
	blurRows(tmp, img, w, h)
	row := w * 3
	for y := range h {
		up := tmp[max(y-1, 0)*row:][:row]
		mid := tmp[y*row:][:row]
		down := tmp[min(y+1, h-1)*row:][:row]
		dst := img[y*row:][:row]
		for i, v := range dst {
			blur := (up[i] + mid[i] + down[i]) * third
			dst[i] = v + (v-blur)*amount
		}
	}
}

// third is 1/3, so that the blurs multiply rather than divide.
const third = float32(1.0 / 3)

// blurRows writes into dst the 3-pixel horizontal box blur of every row of
// src (h rows of w RGB pixels), clamping at the edges.
func blurRows(dst, src []float32, w, h int) {
	row := w * 3
	for y := range h {
		s := src[y*row:][:row]
		d := dst[y*row:][:row]
		for i := range s {
			l, r := i-3, i+3
			if l < 0 {
				l = i
			}
			if r >= row {
				r = i
			}
			d[i] = (s[l] + s[i] + s[r]) * third
		}
	}
}
