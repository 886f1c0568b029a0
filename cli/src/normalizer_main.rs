//! The `main` of the normalizer binaries: serve requests on stdin and
//! stdout (`sluice_worker::isolation`), or refuse other arguments.

pub fn run(name: &str) -> ! {
    sluice_worker::limit_malloc_arenas();
    super::logs::init("warn,lance=error");
    let mut args = std::env::args().skip(1);
    // Started the way `sluice` is: with the subcommand name.
    if !matches!(args.next().as_deref(), None | Some(sluice_worker::isolation::SUBCOMMAND)) || args.next().is_some() {
        eprintln!(
            "{name} is started by sluice workers: it reads normalization requests on stdin \
             and answers on stdout (usage: {name} [{}])",
            sluice_worker::isolation::SUBCOMMAND
        );
        std::process::exit(2);
    }
    sluice_worker::isolation::serve_stdio();
}
