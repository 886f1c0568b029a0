//! `sluice-normalizer`: the process a worker starts for each normalizer
//! (media decoders are C code fed untrusted files; see
//! `sluice_worker::isolation`). A binary of its own, so each of these
//! processes maps the decoders and not the table engine, the coordinator
//! and the rest of `sluice`. Workers fall back to `sluice normalize-server`
//! where this binary is not installed beside `sluice`.

#[path = "../logs.rs"]
mod logs;

fn main() {
    sluice_worker::limit_malloc_arenas();
    logs::init("warn,lance=error");
    let mut args = std::env::args().skip(1);
    // Started the way `sluice` is: with the subcommand name.
    if !matches!(args.next().as_deref(), None | Some(sluice_worker::isolation::SUBCOMMAND)) || args.next().is_some() {
        eprintln!(
            "sluice-normalizer is started by sluice workers: it reads normalization requests on stdin \
             and answers on stdout (usage: sluice-normalizer [{}])",
            sluice_worker::isolation::SUBCOMMAND
        );
        std::process::exit(2);
    }
    sluice_worker::isolation::serve_stdio();
}
