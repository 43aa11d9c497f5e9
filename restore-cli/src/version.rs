//! What `pgvault --version` says: the release, and the versions of the repository
//! formats it reads and writes (docs/FORMAT.md), taken from core's constants so they can
//! never drift from what the code does.

use std::ops::RangeInclusive;
use std::sync::OnceLock;

use pgvault_core::drill::report::{REPORT_FORMAT_VERSION, REPORT_READ_FORMAT_VERSIONS};
use pgvault_core::repository::{READ_FORMAT_VERSIONS, WRITTEN_FORMAT_VERSIONS};

/// `--version`: e.g. `0.1.0 (manifests: reads 1-3, writes 1-3; restore-test reports:
/// reads 1, writes 1)` (clap puts the name in front).
pub(crate) fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let written_min = WRITTEN_FORMAT_VERSIONS.iter().copied().min().unwrap_or(0);
        let written_max = WRITTEN_FORMAT_VERSIONS.iter().copied().max().unwrap_or(0);
        format!(
            "{} (manifests: reads {}, writes {}; restore-test reports: reads {}, writes {})",
            env!("CARGO_PKG_VERSION"),
            span(READ_FORMAT_VERSIONS),
            span(written_min..=written_max),
            span(REPORT_READ_FORMAT_VERSIONS),
            span(REPORT_FORMAT_VERSION..=REPORT_FORMAT_VERSION),
        )
    })
}

/// `1-3` for a range of versions, `1` for a single one.
fn span(versions: RangeInclusive<u32>) -> String {
    if versions.start() == versions.end() {
        versions.start().to_string()
    } else {
        format!("{}-{}", versions.start(), versions.end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_people_write_them() {
        assert_eq!(span(1..=3), "1-3");
        assert_eq!(span(2..=2), "2");
    }

    #[test]
    fn the_long_version_names_every_format_from_core() {
        let text = long_version();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        let manifests = format!(
            "manifests: reads {}-{}",
            READ_FORMAT_VERSIONS.start(),
            READ_FORMAT_VERSIONS.end()
        );
        assert!(text.contains(&manifests), "{text}");
        assert!(
            text.contains(&format!(
                "restore-test reports: reads {}",
                span(REPORT_READ_FORMAT_VERSIONS)
            )),
            "{text}"
        );
        // Every version written is one that is read.
        assert!(WRITTEN_FORMAT_VERSIONS
            .iter()
            .all(|v| READ_FORMAT_VERSIONS.contains(v)));
    }
}
