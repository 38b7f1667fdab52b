package procedural

import (
	"bytes"
	"image"
	"image/jpeg"
)

// Previews are small JPEGs of the latent while it is being sampled.
const (
	// previewMaxSide bounds the long side of a preview, in pixels; the
	// public API documents it.
	previewMaxSide = 256
	// previewQuality is the JPEG quality of a preview: it is a glance at
	// work in progress, sent while the job runs, so bytes matter more than
	// fidelity.
	previewQuality = 70
	// previewTaps bounds the source samples per preview pixel along each
	// axis. A full box filter reads every value of the latent, a sizeable
	// fraction of a step at 2048×2048 (an 8×8 box per preview pixel). At
	// most 2×2 evenly spaced samples read at most two source rows per
	// preview row, whatever the image size, still average away much of the
	// latent's per-pixel noise, and are exactly a 2×2 box filter at the
	// common 2:1 reduction (512×512 → 256×256).
	previewTaps = 2
)

// previewSize is the size of a preview of a w×h image: the image's own
// size when its long side fits in previewMaxSide, else scaled down so that
// the long side is previewMaxSide and the aspect ratio is kept, to the
// nearest pixel.
func previewSize(w, h int) (pw, ph int) {
	long := max(w, h)
	if long <= previewMaxSide {
		return w, h
	}
	pw = max(1, (w*previewMaxSide+long/2)/long)
	ph = max(1, (h*previewMaxSide+long/2)/long)
	return pw, ph
}

// previewTapsFor returns, for each of p preview positions along an axis of
// n source positions (p <= n), the source positions it averages: those of
// preview position o are idx[start[o]:start[o+1]]. They are up to
// previewTaps positions spread evenly across o's box [o·n/p, (o+1)·n/p);
// when the box is no wider than previewTaps, that is the whole box, a plain
// box filter.
func previewTapsFor(n, p int) (start, idx []int) {
	start = make([]int, p+1)
	idx = make([]int, 0, min(n, p*previewTaps))
	for o := range p {
		a, b := o*n/p, (o+1)*n/p
		size := b - a
		k := min(size, previewTaps)
		for j := range k {
			// Centre of the j-th of k equal slices of the box.
			idx = append(idx, a+(2*j+1)*size/(2*k))
		}
		start[o+1] = len(idx)
	}
	return start, idx
}

// downscalePreview renders the latent x (w×h×3, RGB rows, nominally 0..1)
// at preview size. It is a pure function of its input, so previews are as
// deterministic as images.
func downscalePreview(x []float32, w, h int) *image.RGBA {
	pw, ph := previewSize(w, h)
	xStart, xIdx := previewTapsFor(w, pw)
	yStart, yIdx := previewTapsFor(h, ph)
	for i := range xIdx {
		xIdx[i] *= 3 // offsets of the pixels in a row of x
	}
	img := image.NewRGBA(image.Rect(0, 0, pw, ph))
	acc := make([]float32, pw*3)
	// Row by row, so that x is read in order: each source row a preview
	// row samples adds its taps into acc.
	for oy := range ph {
		clear(acc)
		ys := yIdx[yStart[oy]:yStart[oy+1]]
		for _, sy := range ys {
			row := x[sy*w*3 : (sy+1)*w*3]
			for ox := range pw {
				var r, g, b float32
				for _, sx := range xIdx[xStart[ox]:xStart[ox+1]] {
					px := row[sx : sx+3 : sx+3]
					r += px[0]
					g += px[1]
					b += px[2]
				}
				a := acc[ox*3 : ox*3+3 : ox*3+3]
				a[0] += r
				a[1] += g
				a[2] += b
			}
		}
		out := img.Pix[oy*img.Stride : oy*img.Stride+pw*4]
		for ox := range pw {
			inv := 1 / float32(len(ys)*(xStart[ox+1]-xStart[ox]))
			a := acc[ox*3 : ox*3+3 : ox*3+3]
			o := out[ox*4 : ox*4+4 : ox*4+4]
			o[0] = quantise(a[0] * inv)
			o[1] = quantise(a[1] * inv)
			o[2] = quantise(a[2] * inv)
			o[3] = 0xff
		}
	}
	return img
}

// encodePreview encodes a downscaled preview as JPEG.
func encodePreview(img *image.RGBA) ([]byte, error) {
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: previewQuality}); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
