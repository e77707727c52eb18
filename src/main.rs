//! The `wxtoken` binary; everything happens in [`wxtoken::cli`].

fn main() -> std::process::ExitCode {
    wxtoken::cli::main()
}
