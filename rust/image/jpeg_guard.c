/*
 * The only C in clipfast: libjpeg reports a fatal error by calling `error_exit`, which must not
 * return. C code answers that with longjmp back to a setjmp; Rust cannot (setjmp returns twice,
 * and unwinding through libjpeg's C frames is undefined). So each libjpeg call that can fail goes
 * through one of these trampolines: it sets a jump point, calls the libjpeg function (a pointer
 * that Rust looked up in the library Pillow itself uses), and returns 1 if the library jumped back
 * instead of returning. Only C frames (libjpeg's and these) lie between setjmp and longjmp.
 *
 * Nothing here knows libjpeg's structs: every argument is a pointer or an integer, and Rust reads
 * the error message afterwards.
 */
#include <setjmp.h>
#include <stddef.h>

#if defined(_MSC_VER)
#define THREAD_LOCAL __declspec(thread)
#else
#define THREAD_LOCAL _Thread_local
#endif

/* The jump point of the libjpeg call running on this thread (each thread decodes its own image). */
static THREAD_LOCAL jmp_buf *current;

/* Installed as the error manager's error_exit. */
void clipfast_jpeg_error_exit(void *cinfo) {
    (void)cinfo;
    longjmp(*current, 1);
}

#define GUARDED(call)                 \
    do {                              \
        jmp_buf env;                  \
        jmp_buf *outer = current;     \
        current = &env;               \
        if (setjmp(env)) {            \
            current = outer;          \
            return 1;                 \
        }                             \
        call;                         \
        current = outer;              \
        return 0;                     \
    } while (0)

typedef void (*create_fn)(void *cinfo, int version, size_t structsize);
typedef void (*mem_src_fn)(void *cinfo, const unsigned char *data, unsigned long size);
typedef int (*int_fn)(void *cinfo);
typedef int (*read_header_fn)(void *cinfo, int require_image);
typedef void (*crop_fn)(void *cinfo, unsigned int *xoffset, unsigned int *width);
typedef unsigned int (*skip_fn)(void *cinfo, unsigned int lines);
typedef unsigned int (*read_fn)(void *cinfo, unsigned char **rows, unsigned int max_lines);

int clipfast_jpeg_create(create_fn f, void *cinfo, int version, size_t structsize) {
    GUARDED(f(cinfo, version, structsize));
}

int clipfast_jpeg_mem_src(mem_src_fn f, void *cinfo, const unsigned char *data, unsigned long size) {
    GUARDED(f(cinfo, data, size));
}

int clipfast_jpeg_read_header(read_header_fn f, void *cinfo, int require_image, int *result) {
    GUARDED(*result = f(cinfo, require_image));
}

/* jpeg_start_decompress and jpeg_finish_decompress: boolean (int) results. */
int clipfast_jpeg_int(int_fn f, void *cinfo, int *result) {
    GUARDED(*result = f(cinfo));
}

int clipfast_jpeg_crop(crop_fn f, void *cinfo, unsigned int *xoffset, unsigned int *width) {
    GUARDED(f(cinfo, xoffset, width));
}

int clipfast_jpeg_skip(skip_fn f, void *cinfo, unsigned int lines, unsigned int *result) {
    GUARDED(*result = f(cinfo, lines));
}

int clipfast_jpeg_read(read_fn f, void *cinfo, unsigned char **rows, unsigned int max_lines,
                       unsigned int *result) {
    GUARDED(*result = f(cinfo, rows, max_lines));
}
