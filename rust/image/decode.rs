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

/// Chunk types Pillow has a handler for (`PngStream.chunk_*`): after the image data it runs them
/// too, and they can raise on content the png crate ignores.
const PILLOW_CHUNKS: [&[u8; 4]; 17] = [
    b"iCCP", b"IHDR", b"IDAT", b"IEND", b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"pHYs",
    b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"acTL", b"fcTL", b"fdAT",
];

/// Whether a PNG passes what Pillow checks itself while it reads the chunks (in Python, one by
/// one), so that a file Pillow, and so clip, refuses never decodes in Rust (`Err` sends it to
/// Pillow, which then gives its own pixels or its own error). The png crate does not check these:
/// - before the first IDAT: each chunk's type is four letters, digits or underscores, its data
///   is all there, and its CRC-32 is right, ancillary chunks included (the png crate does not
///   verify the CRC of chunks it skips, such as an ICC profile);
/// - after the image data, up to IEND: every chunk's data is all there (Pillow reads it and fails
///   on a short read, where the png crate stops once it has the pixels), and no chunk is one that
///   Pillow interprets there (its handlers can raise): such files go to Pillow. Pillow checks no
///   CRC after the first IDAT, and stops quietly at a type that is not a chunk type, as here.
pub fn pillow_chunk_checks(data: &[u8]) -> Result<(), String> {
    let mut at: usize = 8;
    let mut image_data = false;
    loop {
        let Some(head) = data.get(at..at.saturating_add(8)) else {
            return if image_data {
                Ok(())
            } else {
                Err("PNG ends before its image data".into())
            };
        };
        let length = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let kind: [u8; 4] = [head[4], head[5], head[6], head[7]];
        let name = String::from_utf8_lossy(&kind).into_owned();
        if !kind.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_') {
            return if image_data {
                Ok(())
            } else {
                Err(format!("broken PNG file (chunk type {kind:?})"))
            };
        }
        let end = at.saturating_add(8).saturating_add(length);
        if &kind == b"IDAT" || &kind == b"fdAT" {
            image_data = true;
        } else if image_data {
            if &kind == b"IEND" {
                return Ok(());
            }
            if PILLOW_CHUNKS.contains(&&kind) {
                return Err(format!(
                    "PNG chunk {name} after the image data: decoded by Pillow"
                ));
            }
        }
        if !image_data {
            let Some(stored) = data.get(end..end.saturating_add(4)) else {
                return Err(format!("PNG chunk {name} is truncated"));
            };
            let stored = u32::from_be_bytes([stored[0], stored[1], stored[2], stored[3]]);
            if crc32fast::hash(&data[at + 4..end]) != stored {
                return Err(format!("broken PNG file (bad checksum in chunk {name})"));
            }
        } else if end > data.len() {
            return Err(format!("PNG chunk {name} is truncated"));
        }
        at = end.saturating_add(4);
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

    /// An RGB PNG with a chunk after the image data (declaring `length` bytes, `data` present).
    fn with_trailing(kind: &[u8], length: u32, data: &[u8]) -> Vec<u8> {
        let file = encode_png(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &[9u8; 12]);
        let iend = file.len() - 12;
        let mut out = file[..iend].to_vec();
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn chunks_after_the_image_data_are_read_as_pillow_reads_them() {
        // Complete and unknown to Pillow: decoded here (a bad CRC there is not checked).
        let mut ok = with_trailing(b"prIv", 3, b"abc");
        ok.extend_from_slice(&[0, 0, 0, 0]);
        assert!(decode_png(&ok, None).is_ok());
        // Pillow reads the chunk and fails on the short read (the fuzzer's find).
        let e = decode_png(&with_trailing(b"HEND", 251, b"x"), None)
            .err()
            .unwrap_or_default();
        assert!(e.contains("truncated"), "{e}");
        // A chunk Pillow interprets after the image data: Pillow decides.
        let mut text = with_trailing(b"tEXt", 3, b"a\0b");
        text.extend_from_slice(&[0, 0, 0, 0]);
        assert!(decode_png(&text, None).is_err());
        // The end of the file, or bytes that are no chunk header, end Pillow's reading quietly
        // (the png crate may still refuse such a file: Pillow then decodes it).
        let file = encode_png(2, 2, png::ColorType::Rgb, png::BitDepth::Eight, &[9u8; 12]);
        assert!(pillow_chunk_checks(&file[..file.len() - 12]).is_ok());
        assert!(pillow_chunk_checks(&with_trailing(b"\0\0\0\0", 99, b"")).is_ok());
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
