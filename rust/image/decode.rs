//! Image files decoded in Rust, on the worker threads: PNG, which is lossless, so a correct
//! decoder gives Pillow's pixels. Only the cases where Pillow's mode is one the 8-bit pipeline
//! reads directly (8-bit L, LA, RGB, RGBA, one frame) are decoded here; the rest (palettes,
//! 16-bit, 1-bit, animations) go to Pillow. JPEGs: see `jpeg.rs` (Pillow's own libjpeg).

use super::pixels::Mode;

/// Refuses an empty image, or one over `max_pixels` (Pillow's `MAX_IMAGE_PIXELS`), from its
/// header's size, before any pixel is decoded.
pub(crate) fn check_size(
    width: usize,
    height: usize,
    max_pixels: Option<u64>,
) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has zero size ({width}x{height})"));
    }
    let pixels = width as u64 * height as u64;
    match max_pixels {
        Some(limit) if pixels > limit => Err(format!(
            "{width}x{height} = {pixels} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS ({limit})"
        )),
        _ => Ok(()),
    }
}

/// A decoded PNG: packed pixels of `mode`.
pub struct DecodedPng {
    pub pixels: Vec<u8>,
    pub width: usize,
    pub height: usize,
    pub mode: Mode,
}

/// What Pillow checks itself while it reads the chunks before the first IDAT (it reads them in
/// Python, one by one): each chunk's type is four letters, digits or underscores, its data is
/// all there, and its CRC-32 is right, ancillary chunks included. The png crate does not verify
/// the CRC of ancillary chunks it skips (an ICC profile, text), so a file that Pillow, and so
/// clip, refuses would decode here; these checks make it go to Pillow instead, which raises.
/// (After the first IDAT Pillow checks no CRC, and neither does anything here need to: the png
/// crate's own errors already send a file to Pillow.)
pub fn pillow_chunk_checks(data: &[u8]) -> Result<(), String> {
    let mut at = 8;
    loop {
        let Some(head) = data.get(at..at + 8) else {
            return Err("PNG ends before its image data".into());
        };
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind = &head[4..8];
        if !kind.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("broken PNG file (chunk type {kind:?})"));
        }
        if kind == b"IDAT" || kind == b"fdAT" {
            return Ok(());
        }
        let end = at.saturating_add(8).saturating_add(length);
        let Some(stored) = data.get(end..end.saturating_add(4)) else {
            return Err(format!(
                "PNG chunk {} is truncated",
                String::from_utf8_lossy(kind)
            ));
        };
        let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
        if crc32fast::hash(&data[at + 4..end]) != stored {
            return Err(format!(
                "broken PNG file (bad checksum in chunk {})",
                String::from_utf8_lossy(kind)
            ));
        }
        at = end + 4;
    }
}

/// Decode an 8-bit L / LA / RGB / RGBA PNG, refusing images over `max_pixels` before any pixel
/// is decoded. `Err` for anything else or any damage: the caller then lets Pillow decide.
pub fn decode_png(data: &[u8], max_pixels: Option<u64>) -> Result<DecodedPng, String> {
    pillow_chunk_checks(data)?;
    let fail = |e: png::DecodingError| format!("cannot decode PNG: {e}");
    let mut decoder = png::Decoder::new(std::io::Cursor::new(data));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(fail)?;
    let info = reader.info();
    let (width, height) = (info.width as usize, info.height as usize);
    if info.animation_control.is_some() {
        return Err("animated PNG: decoded by Pillow".into());
    }
    let mode = match (info.color_type, info.bit_depth) {
        (png::ColorType::Grayscale, png::BitDepth::Eight) => Mode::L,
        (png::ColorType::GrayscaleAlpha, png::BitDepth::Eight) => Mode::LA,
        (png::ColorType::Rgb, png::BitDepth::Eight) => Mode::Rgb,
        (png::ColorType::Rgba, png::BitDepth::Eight) => Mode::Rgba,
        (color, depth) => return Err(format!("PNG of {color:?} {depth:?}: decoded by Pillow")),
    };
    check_size(width, height, max_pixels)?;
    let size = reader
        .output_buffer_size()
        .ok_or("cannot decode PNG: image too large")?;
    let packed = width * height * mode.packed_size();
    if size != packed {
        return Err(format!(
            "cannot decode PNG: {size} bytes for {width}x{height} {mode:?}"
        ));
    }
    let mut buffer = vec![0u8; size];
    let frame = reader.next_frame(&mut buffer).map_err(fail)?;
    if frame.buffer_size() != packed {
        return Err("cannot decode PNG: short frame".into());
    }
    Ok(DecodedPng {
        pixels: buffer,
        width,
        height,
        mode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_png(
        width: u32,
        height: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(data).expect("data");
        writer.finish().expect("finish");
        out
    }

    #[test]
    fn png_round_trips_for_the_direct_kinds() {
        for (color, mode) in [
            (png::ColorType::Grayscale, Mode::L),
            (png::ColorType::GrayscaleAlpha, Mode::LA),
            (png::ColorType::Rgb, Mode::Rgb),
            (png::ColorType::Rgba, Mode::Rgba),
        ] {
            let (w, h) = (13u32, 7u32);
            let data: Vec<u8> = (0..w * h * mode.packed_size() as u32)
                .map(|i| (i * 37 % 256) as u8)
                .collect();
            let file = encode_png(w, h, color, png::BitDepth::Eight, &data);
            let img = decode_png(&file, Some(1000)).expect("decodes");
            assert_eq!((img.width, img.height, img.mode), (13, 7, mode));
            assert_eq!(img.pixels, data);
            assert!(decode_png(&file, Some(90)).is_err(), "over the pixel limit");
            assert!(
                decode_png(&file[..file.len() / 2], None).is_err(),
                "truncated"
            );
        }
    }

    #[test]
    fn other_pngs_are_left_to_pillow() {
        let wide = encode_png(
            4,
            4,
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            &[7u8; 96],
        );
        assert!(decode_png(&wide, None).is_err());
        let palette = {
            let mut out = Vec::new();
            let mut encoder = png::Encoder::new(&mut out, 2, 2);
            encoder.set_color(png::ColorType::Indexed);
            encoder.set_palette(vec![0u8, 0, 0, 255, 255, 255]);
            let mut writer = encoder.write_header().expect("header");
            writer.write_image_data(&[0, 1, 1, 0]).expect("data");
            writer.finish().expect("finish");
            out
        };
        assert!(decode_png(&palette, None).is_err());
        assert!(decode_png(b"\x89PNG\r\n\x1a\n garbage", None).is_err());
    }

    /// Chunk `kind` with `data` and its CRC-32 (xor `flip`).
    fn chunk(kind: &[u8], data: &[u8], flip: u32) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32fast::hash(&out[4..]) ^ flip;
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// An RGB PNG with an ancillary chunk before the image data (with its CRC xor `flip`).
    fn with_ancillary(kind: &[u8], flip: u32) -> Vec<u8> {
        let file = encode_png(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &[9u8; 12]);
        // Signature (8) + IHDR chunk (25), then the ancillary chunk, then the rest.
        let mut out = file[..33].to_vec();
        out.extend(chunk(kind, b"any ancillary data", flip));
        out.extend_from_slice(&file[33..]);
        out
    }

    #[test]
    fn a_bad_crc_before_the_image_data_is_pillows_to_refuse() {
        for kind in [&b"iCCP"[..], b"tEXt", b"zTXt", b"bKGD", b"prIv"] {
            let good = with_ancillary(kind, 0);
            assert!(decode_png(&good, None).is_ok(), "{kind:?}");
            let bad = with_ancillary(kind, 1);
            let e = decode_png(&bad, None).err().unwrap_or_default();
            assert!(e.contains("bad checksum"), "{kind:?}: {e}");
        }
        let bad_type = with_ancillary(b"t\xffXt", 0);
        assert!(decode_png(&bad_type, None).is_err());
    }
}
