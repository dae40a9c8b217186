// The targets load the instrumented liblsync.so (built by this same build)
// at run time: it needs the sanitizer and coverage hooks of the executable,
// which are exported to it only with --export-dynamic.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic");
}
