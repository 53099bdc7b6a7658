//! The fast decode mode: JPEG bytes decoded in Rust (zune-jpeg), on the worker threads.
//!
//! zune-jpeg's IDCT and chroma upsampling are not libjpeg-turbo's, so pixels can differ from
//! Pillow's decode by a few levels; the exact mode decodes with Pillow instead.

use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// A decoded image: packed RGB rows.
pub struct Decoded {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// Whether `data` starts like a JPEG file (SOI marker followed by another marker).
pub fn is_jpeg(data: &[u8]) -> bool {
    data.len() > 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF
}

/// Decode JPEG bytes to RGB, refusing images over `max_pixels` before any pixel is decoded.
/// Strict mode: truncated or corrupt data is an error, not a grey-filled image.
pub fn decode_jpeg(data: &[u8], max_pixels: Option<u64>) -> Result<Decoded, String> {
    let options = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_strict_mode(true)
        .set_max_width(1 << 16)
        .set_max_height(1 << 16);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder
        .decode_headers()
        .map_err(|e| format!("cannot decode JPEG: {e:?}"))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or("cannot decode JPEG: no frame header")?;
    if width == 0 || height == 0 {
        return Err(format!("image has zero size ({width}x{height})"));
    }
    let pixels = width as u64 * height as u64;
    if let Some(limit) = max_pixels {
        if pixels > limit {
            return Err(format!(
                "{width}x{height} = {pixels} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS ({limit})"
            ));
        }
    }
    let rgb = decoder
        .decode()
        .map_err(|e| format!("cannot decode JPEG: {e:?}"))?;
    if rgb.len() != width * height * 3 {
        return Err(format!(
            "cannot decode JPEG: got {} bytes for {width}x{height} RGB",
            rgb.len()
        ));
    }
    Ok(Decoded { rgb, width, height })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(!is_jpeg(b"hello"));
        assert!(decode_jpeg(b"\xFF\xD8\xFF\xE0 not really", None).is_err());
        assert!(decode_jpeg(&[], None).is_err());
    }
}
