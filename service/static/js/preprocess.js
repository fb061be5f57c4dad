// "The input as the model sees it", computed in the browser from the metadata's preprocessing:
// Resize(shorter side) → CenterCrop → colour mode. The service does the exact (torchvision)
// version; this canvas rendering uses the browser's resampling, so it is labelled approximate.

/** Decode a Blob into an ImageBitmap (or throw a readable error). */
export async function decodeImage(blob) {
  try {
    return await createImageBitmap(blob);
  } catch {
    return null; // the browser cannot show it; the service is the judge of what it accepts
  }
}

/** Draw `bitmap` preprocessed as `detail` says onto `canvas` (size = the model's input). */
export function drawModelInput(canvas, bitmap, detail) {
  const { resize, center_crop: crop, interpolation } = detail.preprocessing;
  const short = Math.min(bitmap.width, bitmap.height);
  // torchvision Resize(int): the shorter side becomes `resize`, the other keeps the ratio.
  const width = bitmap.width === short ? resize : Math.floor((resize * bitmap.width) / short);
  const height = bitmap.height === short ? resize : Math.floor((resize * bitmap.height) / short);
  const left = Math.round((width - crop) / 2);
  const top = Math.round((height - crop) / 2);
  canvas.width = crop;
  canvas.height = crop;
  // Read back (getImageData) for greyscale models, on every image: the first getContext call
  // fixes the canvas's attributes, so it asks for a readback-friendly canvas from the start.
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.imageSmoothingEnabled = interpolation !== "nearest";
  context.imageSmoothingQuality = "high";
  context.fillStyle = "#000";
  context.fillRect(0, 0, crop, crop);
  context.drawImage(bitmap, -left, -top, width, height);
  if (detail.input.color_mode === "L") {
    const image = context.getImageData(0, 0, crop, crop);
    const d = image.data;
    for (let i = 0; i < d.length; i += 4) {
      // PIL's convert("L"): ITU-R 601-2 luma
      const luma = (d[i] * 299 + d[i + 1] * 587 + d[i + 2] * 114) / 1000;
      d[i] = d[i + 1] = d[i + 2] = luma;
    }
    context.putImageData(image, 0, 0);
  }
  return { width, height, crop };
}
