//! JPEG decoding with the libjpeg-turbo that Pillow itself uses, called directly.
//!
//! Pillow decodes a JPEG through libjpeg with the library's default settings (ISLOW IDCT, fancy
//! upsampling) into RGB or L. Calling the very same library with the same settings gives the same
//! pixels, bit for bit; what changes is what Pillow adds around it (a 4-byte-per-pixel image,
//! 64 KiB chunks fed through a suspending source) and that here only the rows and columns the
//! centre crop reads are converted: `jpeg_crop_scanline` limits IDCT, upsampling and colour
//! conversion to a column band, `jpeg_skip_scanlines` skips rows above the crop. Every byte of
//! the stream is still entropy-decoded, so damage anywhere is noticed.
//!
//! The library is not linked: Python names Pillow's `_imaging` extension and the functions are
//! looked up through it (`dlsym` on that object finds the libjpeg it was linked with). libjpeg's
//! 6.2 ABI is declared below; `jpeg_CreateDecompress` refuses a struct size or version that does
//! not match the library, and Python checks the result against Pillow before using this path.
//! Any failure or libjpeg warning makes the caller fall back to Pillow, which then gives its own
//! pixels or its own error.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void, CStr};
use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use super::pixels::Mode;

/// libjpeg's `J_COLOR_SPACE` values used here.
const JCS_GRAYSCALE: c_int = 1;
const JCS_RGB: c_int = 2;
/// `jpeg_read_header`'s result for a stream with an image.
const JPEG_HEADER_OK: c_int = 1;
/// The ABI this declaration follows (`libjpeg.so.62`, the one Pillow's wheels and most Linux
/// distributions ship).
const JPEG_LIB_VERSION: c_int = 62;
/// Columns and rows decoded beyond what the resize reads, so that the edges of the cropped band
/// (where upsampling sees no neighbour) never reach a kept pixel; one iMCU is enough (at most
/// 32 pixels), this is more.
const MARGIN: usize = 48;

type Cinfo = *mut Decompress;

/// `struct jpeg_error_mgr` (ABI 6.2).
#[repr(C)]
struct ErrorMgr {
    error_exit: Option<unsafe extern "C" fn(Cinfo)>,
    emit_message: Option<unsafe extern "C" fn(Cinfo, c_int)>,
    output_message: Option<unsafe extern "C" fn(Cinfo)>,
    format_message: Option<unsafe extern "C" fn(Cinfo, *mut c_char)>,
    reset_error_mgr: Option<unsafe extern "C" fn(Cinfo)>,
    msg_code: c_int,
    msg_parm: [c_int; 20],
    trace_level: c_int,
    num_warnings: c_long,
    jpeg_message_table: *const *const c_char,
    last_jpeg_message: c_int,
    addon_message_table: *const *const c_char,
    first_addon_message: c_int,
    last_addon_message: c_int,
}

/// `struct jpeg_decompress_struct` (ABI 6.2: `JPEG_LIB_VERSION` 62, 8-bit samples). Only a few
/// fields are read or written; the rest are declared so that the size and offsets match.
#[repr(C)]
struct Decompress {
    err: *mut ErrorMgr,
    mem: *mut c_void,
    progress: *mut c_void,
    client_data: *mut c_void,
    is_decompressor: c_int,
    global_state: c_int,
    src: *mut c_void,
    image_width: c_uint,
    image_height: c_uint,
    num_components: c_int,
    jpeg_color_space: c_int,
    out_color_space: c_int,
    scale_num: c_uint,
    scale_denom: c_uint,
    output_gamma: f64,
    buffered_image: c_int,
    raw_data_out: c_int,
    dct_method: c_int,
    do_fancy_upsampling: c_int,
    do_block_smoothing: c_int,
    quantize_colors: c_int,
    dither_mode: c_int,
    two_pass_quantize: c_int,
    desired_number_of_colors: c_int,
    enable_1pass_quant: c_int,
    enable_external_quant: c_int,
    enable_2pass_quant: c_int,
    output_width: c_uint,
    output_height: c_uint,
    out_color_components: c_int,
    output_components: c_int,
    rec_outbuf_height: c_int,
    actual_number_of_colors: c_int,
    colormap: *mut c_void,
    output_scanline: c_uint,
    input_scan_number: c_int,
    input_imcu_row: c_uint,
    output_scan_number: c_int,
    output_imcu_row: c_uint,
    coef_bits: *mut c_void,
    quant_tbl_ptrs: [*mut c_void; 4],
    dc_huff_tbl_ptrs: [*mut c_void; 4],
    ac_huff_tbl_ptrs: [*mut c_void; 4],
    data_precision: c_int,
    comp_info: *mut c_void,
    progressive_mode: c_int,
    arith_code: c_int,
    arith_dc_l: [u8; 16],
    arith_dc_u: [u8; 16],
    arith_ac_k: [u8; 16],
    restart_interval: c_uint,
    saw_jfif_marker: c_int,
    jfif_major_version: u8,
    jfif_minor_version: u8,
    density_unit: u8,
    x_density: u16,
    y_density: u16,
    saw_adobe_marker: c_int,
    adobe_transform: u8,
    ccir601_sampling: c_int,
    marker_list: *mut c_void,
    max_h_samp_factor: c_int,
    max_v_samp_factor: c_int,
    min_dct_scaled_size: c_int,
    total_imcu_rows: c_uint,
    sample_range_limit: *mut c_void,
    comps_in_scan: c_int,
    cur_comp_info: [*mut c_void; 4],
    mcus_per_row: c_uint,
    mcu_rows_in_scan: c_uint,
    blocks_in_mcu: c_int,
    mcu_membership: [c_int; 10],
    ss: c_int,
    se: c_int,
    ah: c_int,
    al: c_int,
    unread_marker: c_int,
    modules: [*mut c_void; 11],
}

// The trampolines of jpeg_guard.c: each returns 1 when libjpeg raised a fatal error.
extern "C" {
    fn clipfast_jpeg_error_exit(cinfo: Cinfo);
    fn clipfast_jpeg_create(f: CreateFn, cinfo: Cinfo, version: c_int, size: usize) -> c_int;
    fn clipfast_jpeg_mem_src(f: MemSrcFn, cinfo: Cinfo, data: *const u8, size: c_ulong) -> c_int;
    fn clipfast_jpeg_read_header(
        f: ReadHeaderFn,
        cinfo: Cinfo,
        require_image: c_int,
        result: *mut c_int,
    ) -> c_int;
    fn clipfast_jpeg_int(f: IntFn, cinfo: Cinfo, result: *mut c_int) -> c_int;
    fn clipfast_jpeg_crop(
        f: CropFn,
        cinfo: Cinfo,
        xoffset: *mut c_uint,
        width: *mut c_uint,
    ) -> c_int;
    fn clipfast_jpeg_skip(f: SkipFn, cinfo: Cinfo, lines: c_uint, result: *mut c_uint) -> c_int;
    fn clipfast_jpeg_read(
        f: ReadFn,
        cinfo: Cinfo,
        rows: *mut *mut u8,
        max_lines: c_uint,
        result: *mut c_uint,
    ) -> c_int;
}

type StdErrorFn = unsafe extern "C" fn(*mut ErrorMgr) -> *mut ErrorMgr;
type CreateFn = unsafe extern "C" fn(Cinfo, c_int, usize);
type MemSrcFn = unsafe extern "C" fn(Cinfo, *const u8, c_ulong);
type ReadHeaderFn = unsafe extern "C" fn(Cinfo, c_int) -> c_int;
type IntFn = unsafe extern "C" fn(Cinfo) -> c_int;
type VoidFn = unsafe extern "C" fn(Cinfo);
type CropFn = unsafe extern "C" fn(Cinfo, *mut c_uint, *mut c_uint);
type SkipFn = unsafe extern "C" fn(Cinfo, c_uint) -> c_uint;
type ReadFn = unsafe extern "C" fn(Cinfo, *mut *mut u8, c_uint) -> c_uint;

/// The libjpeg functions this module calls, looked up once.
struct Library {
    std_error: StdErrorFn,
    create: CreateFn,
    destroy: VoidFn,
    mem_src: MemSrcFn,
    read_header: ReadHeaderFn,
    start: IntFn,
    finish: IntFn,
    crop: CropFn,
    skip: SkipFn,
    read: ReadFn,
}

static LIBRARY: OnceLock<Library> = OnceLock::new();

/// Look up libjpeg's functions through the shared object at `path` (Pillow's `_imaging`
/// extension, already loaded) or a libjpeg itself. The first success is kept for the process.
#[cfg(unix)]
pub fn use_library(path: &str) -> Result<(), String> {
    if LIBRARY.get().is_some() {
        return Ok(());
    }
    let cpath = std::ffi::CString::new(path).map_err(|_| "path holds a NUL byte".to_string())?;
    // SAFETY: dlopen with a valid C string; RTLD_NOLOAD first so that an extension Python loaded
    // is found, not loaded a second time.
    let mut handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        // SAFETY: as above; loading a libjpeg by path (the Rust tests do this).
        handle = unsafe { libc::dlopen(cpath.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    }
    if handle.is_null() {
        return Err(format!("cannot open {path}"));
    }
    let symbol = |name: &CStr| -> Result<*mut c_void, String> {
        // SAFETY: handle is a live handle from dlopen (never closed); name is a C string.
        let ptr = unsafe { libc::dlsym(handle, name.as_ptr()) };
        if ptr.is_null() {
            Err(format!("{path} has no {}", name.to_string_lossy()))
        } else {
            Ok(ptr)
        }
    };
    // SAFETY: each symbol is libjpeg's function of that name, whose C prototype (6.2 API) is the
    // function type it is cast to; the library stays loaded for the life of the process.
    let lib = unsafe {
        Library {
            std_error: std::mem::transmute::<*mut c_void, StdErrorFn>(symbol(c"jpeg_std_error")?),
            create: std::mem::transmute::<*mut c_void, CreateFn>(symbol(c"jpeg_CreateDecompress")?),
            destroy: std::mem::transmute::<*mut c_void, VoidFn>(symbol(
                c"jpeg_destroy_decompress",
            )?),
            mem_src: std::mem::transmute::<*mut c_void, MemSrcFn>(symbol(c"jpeg_mem_src")?),
            read_header: std::mem::transmute::<*mut c_void, ReadHeaderFn>(symbol(
                c"jpeg_read_header",
            )?),
            start: std::mem::transmute::<*mut c_void, IntFn>(symbol(c"jpeg_start_decompress")?),
            finish: std::mem::transmute::<*mut c_void, IntFn>(symbol(c"jpeg_finish_decompress")?),
            crop: std::mem::transmute::<*mut c_void, CropFn>(symbol(c"jpeg_crop_scanline")?),
            skip: std::mem::transmute::<*mut c_void, SkipFn>(symbol(c"jpeg_skip_scanlines")?),
            read: std::mem::transmute::<*mut c_void, ReadFn>(symbol(c"jpeg_read_scanlines")?),
        }
    };
    // Refuse a library whose ABI differs before any image depends on it.
    let probe = Decoder::new(&lib)?;
    drop(probe);
    let _ = LIBRARY.set(lib);
    Ok(())
}

#[cfg(not(unix))]
pub fn use_library(_path: &str) -> Result<(), String> {
    Err("decoding JPEGs through Pillow's libjpeg is implemented on Unix only".into())
}

/// Warnings are counted, not printed (Pillow prints none either).
unsafe extern "C" fn quiet(_cinfo: Cinfo) {}

/// One decompression: owns libjpeg's state and destroys it when dropped.
pub struct Decoder<'lib> {
    lib: &'lib Library,
    // Boxed: libjpeg keeps pointers to both for the life of the decompression.
    cinfo: Box<Decompress>,
    err: Box<ErrorMgr>,
    /// Decoded columns, after cropping.
    cols: Range<usize>,
    /// The full (scaled) image size.
    width: usize,
    height: usize,
    mode: Mode,
}

impl Drop for Decoder<'_> {
    fn drop(&mut self) {
        // SAFETY: cinfo was set up by jpeg_CreateDecompress (or left zeroed when that failed, in
        // which case `mem` is NULL and destroy does nothing); destroy never raises an error.
        unsafe { (self.lib.destroy)(self.cinfo.as_mut()) }
    }
}

impl<'lib> Decoder<'lib> {
    fn new(lib: &'lib Library) -> Result<Decoder<'lib>, String> {
        // SAFETY: both structs are plain C data (integers, floats, pointers, Option<fn>), for
        // which all-zero bytes are valid values (NULL pointers, None).
        let (cinfo, err) = unsafe {
            (
                Box::new(MaybeUninit::<Decompress>::zeroed().assume_init()),
                Box::new(MaybeUninit::<ErrorMgr>::zeroed().assume_init()),
            )
        };
        let mut dec = Decoder {
            lib,
            cinfo,
            err,
            cols: 0..0,
            width: 0,
            height: 0,
            mode: Mode::L,
        };
        // SAFETY: jpeg_std_error fills the error manager it is given and returns it.
        let err: *mut ErrorMgr = unsafe { (lib.std_error)(dec.err.as_mut()) };
        dec.err.error_exit = Some(clipfast_jpeg_error_exit);
        dec.err.output_message = Some(quiet);
        dec.cinfo.err = err;
        let size = std::mem::size_of::<Decompress>();
        // SAFETY: the trampoline calls jpeg_CreateDecompress on our zeroed struct of `size` bytes;
        // the library checks version and size itself and raises an error (caught) on a mismatch.
        let failed =
            unsafe { clipfast_jpeg_create(lib.create, dec.cinfo.as_mut(), JPEG_LIB_VERSION, size) };
        dec.check(failed)?;
        Ok(dec)
    }

    /// libjpeg's message for the error just raised.
    fn message(&mut self) -> String {
        let mut buf = [0 as c_char; 256];
        if let Some(format) = self.err.format_message {
            // SAFETY: format_message writes at most JMSG_LENGTH_MAX (200) bytes, NUL included.
            unsafe { format(self.cinfo.as_mut(), buf.as_mut_ptr()) };
        }
        // SAFETY: the buffer is NUL-terminated (zeroed, and libjpeg terminates what it writes).
        let text = unsafe { CStr::from_ptr(buf.as_ptr()) };
        format!("libjpeg: {}", text.to_string_lossy())
    }

    fn check(&mut self, failed: c_int) -> Result<(), String> {
        if failed != 0 {
            return Err(self.message());
        }
        Ok(())
    }

    /// Read the header of `data` and start decompressing it, at 1/`scale` size (1, 2, 4 or 8).
    /// `max_pixels` (Pillow's limit) applies to the size the file declares.
    pub fn open(
        data: &[u8],
        scale_for: Option<usize>,
        max_pixels: Option<u64>,
    ) -> Result<Decoder<'static>, String> {
        let lib = LIBRARY.get().ok_or("Pillow's libjpeg is not in use")?;
        let mut dec = Decoder::new(lib)?;
        let len = c_ulong::try_from(data.len()).map_err(|_| "JPEG too large")?;
        // SAFETY: `data` outlives the decoder (it is borrowed for the whole decode by the caller,
        // which drops the decoder first); libjpeg only reads it.
        let failed =
            unsafe { clipfast_jpeg_mem_src(lib.mem_src, dec.cinfo.as_mut(), data.as_ptr(), len) };
        dec.check(failed)?;
        let mut status = 0;
        // SAFETY: a created decompressor with a source; the result is written to `status`.
        let failed = unsafe {
            clipfast_jpeg_read_header(lib.read_header, dec.cinfo.as_mut(), 1, &mut status)
        };
        dec.check(failed)?;
        if status != JPEG_HEADER_OK {
            return Err("no image in this JPEG stream".into());
        }
        let (w, h) = (
            dec.cinfo.image_width as usize,
            dec.cinfo.image_height as usize,
        );
        super::decode::check_size(w, h, max_pixels)?;
        // Pillow's mode follows the number of components: 1 is L, 3 is RGB; 4 (CMYK) and
        // others take Pillow's own path.
        let (mode, out_space) = match dec.cinfo.num_components {
            1 => (Mode::L, JCS_GRAYSCALE),
            // Packed RGB: libjpeg-turbo writes it much faster than its 4-byte RGBX (what Pillow
            // asks for); the resize widens each band of rows to 4 bytes while it is in cache.
            3 => (Mode::Rgb, JCS_RGB),
            n => return Err(format!("JPEG with {n} components: decoded by Pillow")),
        };
        dec.cinfo.out_color_space = out_space;
        // Pillow's draft(): the largest of 8, 4, 2 that keeps both sides >= `reduce_to`.
        if let Some(reduce_to) = scale_for {
            let fit = (w / reduce_to.max(1)).min(h / reduce_to.max(1));
            let scale = [8u32, 4, 2, 1]
                .into_iter()
                .find(|&s| fit >= s as usize)
                .unwrap_or(1);
            if scale > 1 {
                dec.cinfo.scale_num = 1;
                dec.cinfo.scale_denom = scale;
            }
        }
        let mut started = 0;
        // SAFETY: header read; starts decompression (buffers a progressive file's coefficients).
        let failed = unsafe { clipfast_jpeg_int(lib.start, dec.cinfo.as_mut(), &mut started) };
        dec.check(failed)?;
        if started == 0 {
            return Err("libjpeg suspended on in-memory data".into());
        }
        let components = usize::try_from(dec.cinfo.output_components).unwrap_or(0);
        if components != mode.packed_size() {
            return Err(format!(
                "libjpeg gives {components} components for {mode:?}"
            ));
        }
        dec.width = dec.cinfo.output_width as usize;
        dec.height = dec.cinfo.output_height as usize;
        dec.cols = 0..dec.width;
        dec.mode = mode;
        Ok(dec)
    }

    /// Image size after scaling.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Pillow's mode for it: L or RGB (decoded packed: 1 or 3 bytes per pixel).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Bytes per decoded pixel.
    pub fn ps(&self) -> usize {
        self.mode.packed_size()
    }

    /// Decode only the columns `want` (plus a margin); returns the columns each row will hold.
    pub fn crop(&mut self, want: Range<usize>) -> Result<Range<usize>, String> {
        let lo = want.start.saturating_sub(MARGIN);
        let hi = (want.end + MARGIN).min(self.width);
        if lo == 0 && hi == self.width || lo >= hi {
            return Ok(self.cols.clone());
        }
        let (mut x, mut w) = (lo as c_uint, (hi - lo) as c_uint);
        // SAFETY: called after jpeg_start_decompress and before any scanline is read.
        let failed =
            unsafe { clipfast_jpeg_crop(self.lib.crop, self.cinfo.as_mut(), &mut x, &mut w) };
        self.check(failed)?;
        let cols = x as usize..x as usize + w as usize;
        // libjpeg widens the band to whole iMCUs; it must still cover what was asked.
        if cols.start > lo || cols.end < hi || cols.end > self.width {
            return Err(format!("libjpeg cropped to {cols:?}, not around {want:?}"));
        }
        if self.cinfo.output_width as usize != cols.len() {
            return Err("libjpeg's cropped width does not match".into());
        }
        self.cols = cols.clone();
        Ok(cols)
    }

    /// Row of the next scanline.
    pub fn row(&self) -> usize {
        self.cinfo.output_scanline as usize
    }

    /// Skip rows (still entropy-decoded, not converted) up to `row`.
    pub fn skip_to(&mut self, row: usize) -> Result<(), String> {
        let row = row.min(self.height);
        if row <= self.row() {
            return Ok(());
        }
        let lines = (row - self.row()) as c_uint;
        let mut skipped = 0;
        // SAFETY: decompression started; skipping within the image.
        let failed =
            unsafe { clipfast_jpeg_skip(self.lib.skip, self.cinfo.as_mut(), lines, &mut skipped) };
        self.check(failed)?;
        if self.row() != row {
            return Err("libjpeg skipped fewer rows than asked".into());
        }
        Ok(())
    }

    /// Position the decoder at `row`: rows above it are only entropy-decoded, except a margin
    /// that is decoded and thrown away (upsampling reads the row above).
    pub fn seek(&mut self, row: usize) -> Result<(), String> {
        self.skip_to(row.saturating_sub(MARGIN))?;
        let mut scratch = vec![0u8; self.cols.len() * self.ps()];
        while self.row() < row {
            self.read(&mut [&mut scratch[..]])?;
        }
        Ok(())
    }

    /// Decode the next `rows.len()` rows into `rows` (each `cols.len() * components` bytes).
    pub fn read(&mut self, rows: &mut [&mut [u8]]) -> Result<(), String> {
        let stride = self.cols.len() * self.ps();
        if rows.iter().any(|r| r.len() < stride) || self.row() + rows.len() > self.height {
            return Err("row buffers do not fit the image".into());
        }
        let mut ptrs: Vec<*mut u8> = rows.iter_mut().map(|r| r.as_mut_ptr()).collect();
        let mut done = 0;
        while done < ptrs.len() {
            let rest = &mut ptrs[done..];
            let mut got = 0;
            // SAFETY: each pointer is a row buffer of at least `stride` bytes (checked above) that
            // outlives the call; libjpeg writes at most `rest.len()` rows of output_width pixels.
            let failed = unsafe {
                clipfast_jpeg_read(
                    self.lib.read,
                    self.cinfo.as_mut(),
                    rest.as_mut_ptr(),
                    rest.len() as c_uint,
                    &mut got,
                )
            };
            self.check(failed)?;
            if got == 0 {
                return Err("libjpeg returned no rows".into());
            }
            done += got as usize;
        }
        Ok(())
    }

    /// Entropy-decode the rest of the stream (so that damage after the kept rows is seen, as
    /// Pillow sees it) and finish; `Err` for any libjpeg warning, so that Pillow decides.
    pub fn finish(mut self) -> Result<(), String> {
        if self.row() < self.height {
            // Not a skip to the very end: libjpeg-turbo then marks the input done without reading
            // it. A skip that stops one row short entropy-decodes every iMCU row it passes, and
            // the last row is decoded (in the cropped band only).
            self.skip_to(self.height - 1)?;
            let mut scratch = vec![0u8; self.cols.len() * self.ps()];
            self.read(&mut [&mut scratch[..]])?;
        }
        let mut ok = 0;
        // SAFETY: every scanline has been read or skipped.
        let failed = unsafe { clipfast_jpeg_int(self.lib.finish, self.cinfo.as_mut(), &mut ok) };
        self.check(failed)?;
        if ok == 0 {
            return Err("libjpeg suspended on in-memory data".into());
        }
        if self.err.num_warnings != 0 {
            return Err(format!("{} (a warning): decoded by Pillow", self.message()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// A 640x427 4:2:0 photo from the Python tests.
    const PHOTO: &[u8] = include_bytes!("../../tests/images/rocket.jpg");

    /// The system's libjpeg-turbo (Python uses Pillow's; these tests only need some 6.2 libjpeg).
    fn library() -> bool {
        let found = ["libjpeg.so.62", "/usr/lib/x86_64-linux-gnu/libjpeg.so.62"]
            .iter()
            .any(|p| use_library(p).is_ok());
        if !found {
            eprintln!("skipped: no libjpeg.so.62 on this machine");
        }
        found
    }

    /// Rows `rows`, columns `cols` of the image, decoded with crop and skip.
    fn band(data: &[u8], rows: Range<usize>, cols: Range<usize>) -> Result<Vec<u8>, String> {
        let mut dec = Decoder::open(data, None, None)?;
        let got = dec.crop(cols.clone())?;
        dec.seek(rows.start)?;
        let ps = dec.ps();
        let stride = got.len() * ps;
        let mut pixels = vec![0u8; rows.len() * stride];
        let mut slices: Vec<&mut [u8]> = pixels.chunks_exact_mut(stride).collect();
        dec.read(&mut slices)?;
        dec.finish()?;
        let (a, b) = ((cols.start - got.start) * ps, (cols.end - got.start) * ps);
        Ok(pixels
            .chunks_exact(stride)
            .flat_map(|r| r[a..b].to_vec())
            .collect())
    }

    #[test]
    fn cropped_and_skipped_bands_equal_the_full_decode() {
        if !library() {
            return;
        }
        let dec = Decoder::open(PHOTO, None, None).expect("opens");
        let (w, h) = dec.size();
        assert_eq!((w, h, dec.mode()), (640, 427, Mode::Rgb));
        drop(dec);
        let full = band(PHOTO, 0..h, 0..w).expect("decodes");
        assert_eq!(full.len(), w * h * 3);
        for (rows, cols) in [
            (0..h, 100..540),
            (37..400, 0..w),
            (200..201, 333..334),
            (5..427, 1..639),
            (120..300, 7..611),
        ] {
            let got = band(PHOTO, rows.clone(), cols.clone()).expect("decodes a band");
            let expected: Vec<u8> = full
                .chunks_exact(w * 3)
                .skip(rows.start)
                .take(rows.len())
                .flat_map(|r| r[cols.start * 3..cols.end * 3].to_vec())
                .collect();
            assert!(got == expected, "band {rows:?} x {cols:?} differs");
        }
    }

    #[test]
    fn scaled_decode_rounds_sizes_up_like_pillows_draft() {
        if !library() {
            return;
        }
        // 640x427 with both sides >= 100: 640 / 100 and 427 / 100 allow 1/4.
        let dec = Decoder::open(PHOTO, Some(100), None).expect("opens");
        assert_eq!(dec.size(), (160, 107));
        let dec = Decoder::open(PHOTO, Some(200), None).expect("opens");
        assert_eq!(dec.size(), (320, 214));
        let dec = Decoder::open(PHOTO, Some(500), None).expect("opens");
        assert_eq!(dec.size(), (640, 427));
    }

    #[test]
    fn damage_is_an_error_never_a_crash() {
        if !library() {
            return;
        }
        let truncated = &PHOTO[..PHOTO.len() / 2];
        assert!(
            band(truncated, 0..427, 0..640).is_err(),
            "libjpeg's EOF warning"
        );
        for bad in [
            &b""[..],
            b"\xff\xd8\xff",
            b"not a jpeg at all",
            &PHOTO[..300],
        ] {
            let err = Decoder::open(bad, None, None).err();
            assert!(err.is_some_and(|e| e.starts_with("libjpeg") || e.contains("image")));
        }
        assert!(
            Decoder::open(PHOTO, None, Some(1000)).is_err(),
            "over the pixel limit"
        );
        let mut dec = Decoder::open(PHOTO, None, None).expect("opens");
        assert!(
            dec.read(&mut [&mut [0u8; 10][..]]).is_err(),
            "row buffer too short"
        );
    }

    /// Offsets and sizes of libjpeg-turbo's jpeglib.h (ABI 62) on LP64 targets.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn abi_layout_matches_jpeglib_h() {
        assert_eq!(std::mem::size_of::<Decompress>(), 632);
        assert_eq!(std::mem::size_of::<ErrorMgr>(), 168);
        assert_eq!(offset_of!(Decompress, src), 40);
        assert_eq!(offset_of!(Decompress, image_width), 48);
        assert_eq!(offset_of!(Decompress, num_components), 56);
        assert_eq!(offset_of!(Decompress, out_color_space), 64);
        assert_eq!(offset_of!(Decompress, scale_num), 68);
        assert_eq!(offset_of!(Decompress, output_gamma), 80);
        assert_eq!(offset_of!(Decompress, dct_method), 96);
        assert_eq!(offset_of!(Decompress, do_fancy_upsampling), 100);
        assert_eq!(offset_of!(Decompress, output_width), 136);
        assert_eq!(offset_of!(Decompress, output_components), 148);
        assert_eq!(offset_of!(Decompress, output_scanline), 168);
        assert_eq!(offset_of!(Decompress, data_precision), 296);
        assert_eq!(offset_of!(Decompress, progressive_mode), 312);
        assert_eq!(offset_of!(Decompress, max_h_samp_factor), 408);
        assert_eq!(offset_of!(Decompress, min_dct_scaled_size), 416);
        assert_eq!(offset_of!(Decompress, unread_marker), 540);
        assert_eq!(offset_of!(Decompress, modules) + 10 * 8, 624);
        assert_eq!(offset_of!(ErrorMgr, msg_code), 40);
        assert_eq!(offset_of!(ErrorMgr, num_warnings), 128);
    }
}
