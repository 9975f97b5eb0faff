// glibc's allocator took a fifth of the CPU of an ingest (malloc, free and their
// consolidation under many small, short-lived allocations from several threads);
// mimalloc is a maintained allocator built for exactly that (BENCHMARKS.md, row 11).
// Without transparent huge pages (`no_thp`): with them an idle gantry held 39 MB
// instead of 22 MB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gantry::cli::main()
}
