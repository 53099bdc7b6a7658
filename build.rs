//! Compiles the one C file: the setjmp trampolines that catch libjpeg's fatal errors
//! (rust/image/jpeg_guard.c explains why they cannot be Rust).

fn main() {
    println!("cargo:rerun-if-changed=rust/image/jpeg_guard.c");
    cc::Build::new()
        .file("rust/image/jpeg_guard.c")
        .warnings(true)
        .compile("clipfast_jpeg_guard");
}
