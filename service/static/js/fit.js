// How far an image is from what the model was trained on: the rules behind the notice beside
// the top-5 (docs/web.md, "When the answer deserves doubt"), and which samples suit a model.

/** A pixel is coloured when max − min of its R, G, B (0–255) is at least this. */
export const COLOURED_PIXEL_CHROMA = 24;
/** A picture with at least this share of coloured pixels is a colour picture. */
export const COLOUR_PICTURE_SHARE = 0.05;
/** A picture with at most this share of coloured pixels is a greyscale one. */
export const GREY_PICTURE_SHARE = 0.005;
/** Enlarging the shorter side more than this to the model's `resize` is flagged. */
export const MAX_UPSCALE = 2;
/** Models with an input side up to this (Fashion-MNIST 28, CIFAR 32) learnt from images of that
size: shrinking a picture more than MAX_DOWNSCALE_SMALL_INPUT times for them is flagged. */
export const SMALL_INPUT_PX = 64;
export const MAX_DOWNSCALE_SMALL_INPUT = 4;
/** Longer side over shorter side beyond this is flagged (the centre crop drops most of it). */
export const MAX_ASPECT = 2;
/** Entropy of the probabilities over ln(classes) from this up is flagged (1 = uniform). */
export const MAX_SPREAD = 0.6;
/** Classify asks for the probabilities of up to this many classes to measure their spread. */
export const SPREAD_TOP_K = 1000;

const ANALYSIS_PX = 64; // the picture is shrunk to at most this side to count coloured pixels

/** Share (0–1) of coloured pixels in `bitmap`, on a copy at most ANALYSIS_PX on a side. */
export function colourShare(bitmap) {
  const scale = Math.min(1, ANALYSIS_PX / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale));
  const height = Math.max(1, Math.round(bitmap.height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0, width, height);
  const data = context.getImageData(0, 0, width, height).data;
  let coloured = 0;
  for (let i = 0; i < data.length; i += 4) {
    const r = data[i];
    const g = data[i + 1];
    const b = data[i + 2];
    if (Math.max(r, g, b) - Math.min(r, g, b) >= COLOURED_PIXEL_CHROMA) coloured++;
  }
  return coloured / (width * height);
}

/** What the page knows of a picture: its size and colour share (null when it cannot decode it). */
export function describePicture(bitmap) {
  if (!bitmap) return null;
  return { width: bitmap.width, height: bitmap.height, colourShare: colourShare(bitmap) };
}

/** Entropy of the answer over `classes`, as a share of ln(classes) (0: certain, 1: uniform), and
as a perplexity (the number of equally likely classes with that entropy). Classes missing from
`predictions` share what probability is left equally: the largest entropy they can have. */
export function spread(predictions, classes) {
  let entropy = 0;
  let mass = 0;
  for (const { probability: p } of predictions) {
    if (p > 0) entropy -= p * Math.log(p);
    mass += p;
  }
  const rest = classes - predictions.length;
  const left = 1 - mass;
  if (rest > 0 && left > 0) entropy -= left * Math.log(left / rest);
  return { share: classes > 1 ? entropy / Math.log(classes) : 0, perplexity: Math.exp(entropy) };
}

const ratio = (value) => (value >= 10 ? value.toFixed(0) : value.toFixed(1));

/** The reasons to doubt this answer: [{code, text}], empty when there is none.

`picture` comes from describePicture (null: only the answer's spread is judged), `detail` is the
model's metadata, `predictions` the answer's (most probable first). */
export function doubts(picture, detail, predictions) {
  const found = [];
  const { resize, center_crop: crop } = detail.preprocessing;
  const grey = detail.input.color_mode === "L";
  const dataset = typeof detail.training?.dataset === "string" ? detail.training.dataset : null;
  if (picture) {
    const { width, height, colourShare: share } = picture;
    const short = Math.min(width, height);
    const long = Math.max(width, height);
    if (grey && share >= COLOUR_PICTURE_SHARE) {
      const on = dataset ? ` (${dataset})` : "";
      found.push({
        code: "colour",
        text: `A colour picture: this model was trained on greyscale images${on} and sees only a grey copy.`,
      });
    }
    if (!grey && share <= GREY_PICTURE_SHARE) {
      found.push({ code: "grey", text: "A greyscale picture: this model was trained on colour images." });
    }
    if (short * MAX_UPSCALE < resize) {
      found.push({
        code: "enlarged",
        text: `A small picture (${width} × ${height}): enlarged ${ratio(resize / short)}× to the model's ${resize} px, it looks blurred to the model.`,
      });
    }
    if (crop <= SMALL_INPUT_PX && short > resize * MAX_DOWNSCALE_SMALL_INPUT) {
      found.push({
        code: "shrunk",
        text: `The model takes ${crop} × ${crop} images: this ${width} × ${height} picture is shrunk ${ratio(short / resize)}× and loses its detail.`,
      });
    }
    if (long > short * MAX_ASPECT) {
      const kept = (crop / resize) ** 2 * (short / long);
      found.push({
        code: "aspect",
        text: `A ${ratio(long / short)}:1 picture: the model's square centre crop keeps ${Math.round(kept * 100)}% of it.`,
      });
    }
  }
  const classes = detail.labels.length;
  const { share, perplexity } = spread(predictions, classes);
  if (share >= MAX_SPREAD) {
    found.push({
      code: "unsure",
      text: `The probabilities are as spread out as an even choice among ${Math.round(perplexity)} of the ${classes} classes.`,
    });
  }
  return found;
}

/** The samples that suit the model (its colour mode; its training data set first) and the rest. */
export function splitSamples(samples, detail) {
  const dataset = detail.training?.dataset;
  const mode = detail.input.color_mode;
  const fits = (s) => (dataset && s.dataset === dataset) || (s.color_mode || mode) === mode;
  const suited = samples.filter(fits);
  suited.sort((a, b) => Number(b.dataset === dataset) - Number(a.dataset === dataset));
  return { suited, others: samples.filter((s) => !fits(s)) };
}
