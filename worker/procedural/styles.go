package procedural

// look is what a style does to the picture. Styles apply in the order the
// job lists them, as Fooocus applies its style prompts in order.
type look struct {
	saturation float32 // 1 keeps colours, 0 is grey, >1 boosts
	contrast   float32 // around mid-grey
	brightness float32 // added
	tint       rgb
	tintAmount float32
	vignette   float32 // darkening at the corners
	sharpen    float32 // added to the unsharp-mask amount
}

// styleNames lists the style names this sampler understands, in the order
// Describe reports them.
var styleNames = []string{
	"Fooocus V2",
	"Fooocus Enhance",
	"Fooocus Sharp",
	"Cinematic",
	"Watercolor",
	"Monochrome",
	"Neon",
}

var looks = map[string]look{
	"Fooocus V2":      {saturation: 1.15, contrast: 1.05},
	"Fooocus Enhance": {saturation: 1.05, contrast: 1.15, brightness: 0.02},
	"Fooocus Sharp":   {saturation: 1, contrast: 1.05, sharpen: 0.4},
	"Cinematic":       {saturation: 0.9, contrast: 1.2, tint: rgb{0.10, 0.45, 0.55}, tintAmount: 0.18, vignette: 0.45},
	"Watercolor":      {saturation: 0.7, contrast: 0.8, brightness: 0.12, tint: rgb{0.95, 0.92, 0.85}, tintAmount: 0.15, sharpen: -0.15},
	"Monochrome":      {saturation: 0, contrast: 1.1},
	"Neon":            {saturation: 1.6, contrast: 1.35, brightness: -0.12, tint: rgb{0.75, 0.10, 0.85}, tintAmount: 0.12},
}

// apply changes img (w×h×3) in place.
func (l look) apply(img []float32, w, h int) {
	cx, cy := float32(w-1)/2, float32(h-1)/2
	inv := 1 / (cx*cx + cy*cy + 1)
	for y := range h {
		dy := float32(y) - cy
		for x := range w {
			i := (y*w + x) * 3
			c := rgb{img[i], img[i+1], img[i+2]}
			lum := 0.2126*c[0] + 0.7152*c[1] + 0.0722*c[2]
			dx := float32(x) - cx
			shade := 1 - l.vignette*(dx*dx+dy*dy)*inv
			for k := range 3 {
				v := lum + (c[k]-lum)*l.saturation
				v += (l.tint[k] - v) * l.tintAmount
				v = (v-0.5)*l.contrast + 0.5 + l.brightness
				img[i+k] = v * shade
			}
		}
	}
}
