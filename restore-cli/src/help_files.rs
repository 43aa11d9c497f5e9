//! Files generated from the command line itself, so they never drift from it: shell
//! completion scripts (`pgvault completions SHELL`) and man pages (`pgvault man`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;

/// The name the completions and man pages are written for.
const BIN: &str = "pgvault";

/// Write the completion script for `shell` to `out`.
pub(crate) fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), BIN, out);
}

/// Write `pgvault.1` and one page per visible subcommand (`pgvault-backup.1`,
/// `pgvault-reports-list.1`, …) into `dir`, creating it when missing. Returns the pages
/// written, sorted.
pub(crate) fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create man page directory {}", dir.display()))?;
    // Built, every subcommand knows its full name (`pgvault-reports-list`).
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut pages = Vec::new();
    write_pages(&cli, dir, &mut pages)?;
    pages.sort();
    Ok(pages)
}

/// Write the page of `cmd` and of each of its visible subcommands, as
/// `clap_mangen::generate_to` does, but with every page naming pgvault's release.
fn write_pages(cmd: &clap::Command, dir: &Path, pages: &mut Vec<PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, pages)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .manual("pgvault manual");
    let path = dir.join(page.get_filename());
    page.generate_to(dir)
        .with_context(|| format!("cannot write man page {}", path.display()))?;
    pages.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the subcommands a user sees (hidden ones left out).
    fn visible_subcommands() -> Vec<String> {
        Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_string())
            .collect()
    }

    #[test]
    fn the_bash_script_completes_every_subcommand() {
        let mut script = Vec::new();
        completions(Shell::Bash, &mut script);
        let script = String::from_utf8(script).unwrap();
        let names = visible_subcommands();
        assert!(names.len() > 10, "{names:?}");
        for name in names {
            // The case that completes the subcommand's own options.
            assert!(
                script.contains(&format!("{BIN},{name})")),
                "no completion for {name}"
            );
        }
    }

    #[test]
    fn zsh_and_fish_scripts_are_written() {
        for shell in [Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            completions(shell, &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(script.contains("restore-test"), "{shell}: {script}");
        }
    }

    #[test]
    fn man_writes_a_page_per_subcommand_that_names_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let pages = man_pages(dir.path()).unwrap();
        let main = std::fs::read_to_string(dir.path().join("pgvault.1")).unwrap();
        assert!(main.contains(".TH pgvault 1"), "{main}");
        for name in visible_subcommands() {
            let page = dir.path().join(format!("pgvault-{name}.1"));
            assert!(pages.contains(&page), "no page for {name}: {pages:?}");
            // roff escapes the hyphens of `pgvault-wal-push(1)`.
            let roff = format!("pgvault\\-{}(1)", name.replace('-', "\\-"));
            assert!(main.contains(&roff), "pgvault.1 does not name {name}");
        }
        assert!(
            !pages.iter().any(|p| p.ends_with("pgvault-wal-pusher.1")),
            "a hidden subcommand got a page: {pages:?}"
        );
        assert!(pages.iter().any(|p| p.ends_with("pgvault-reports-list.1")));
        // Each page names its own options, in roff (`\-\-policy`).
        let backup = std::fs::read_to_string(dir.path().join("pgvault-backup.1")).unwrap();
        for option in ["policy", "kind", "incremental", "json"] {
            assert!(
                backup.contains(&format!("\\-\\-{option}")),
                "pgvault-backup.1 lacks --{option}:\n{backup}"
            );
        }
        let list = std::fs::read_to_string(dir.path().join("pgvault-list.1")).unwrap();
        for option in ["policy", "kind", "since", "until", "json"] {
            assert!(
                list.contains(&format!("\\-\\-{option}")),
                "pgvault-list.1 lacks --{option}:\n{list}"
            );
        }
    }
}
