//! Cluster globals (`pg_dumpall --globals-only`): the roles, memberships and settings a
//! database needs before its dump can be restored on a fresh server.
//!
//! Restores apply them statement by statement, skipping every statement about a role
//! that already exists on the target (its attributes there are the operator's, not the
//! backup's) and tablespaces (their locations are host paths). Other failures, such as a
//! membership granted by a role the target lacks, are warnings, not fatal errors: the
//! `pg_restore` that follows reports anything that truly blocks the restore.

/// One statement of a globals script and what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobalStatement {
    /// `CREATE ROLE name;` or `ALTER ROLE name …`.
    Role {
        /// The role the statement is about (unquoted).
        role: String,
        /// The SQL text.
        sql: String,
    },
    /// `CREATE TABLESPACE …` and its ALTERs, skipped on restore.
    Tablespace {
        /// The SQL text.
        sql: String,
    },
    /// Anything else (`SET`, `GRANT … TO …`, comments excluded).
    Other {
        /// The SQL text.
        sql: String,
    },
}

/// Split a globals script into statements. pg_dumpall writes one statement per line;
/// a statement continues until a line ends with `;`.
pub fn parse(script: &str) -> Vec<GlobalStatement> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in script.lines() {
        if current.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with("--")) {
            continue;
        }
        if line.starts_with('\\') {
            // psql meta-commands (e.g. \restrict in newer versions) are not SQL.
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        if line.trim_end().ends_with(';') {
            out.push(classify(std::mem::take(&mut current)));
        }
    }
    if !current.trim().is_empty() {
        out.push(classify(current));
    }
    out
}

fn classify(sql: String) -> GlobalStatement {
    let upper = sql.trim_start().to_ascii_uppercase();
    for prefix in ["CREATE ROLE ", "ALTER ROLE "] {
        if upper.starts_with(prefix) {
            let rest = &sql.trim_start()[prefix.len()..];
            if let Some(role) = leading_identifier(rest) {
                return GlobalStatement::Role { role, sql };
            }
        }
    }
    if upper.starts_with("CREATE TABLESPACE ") || upper.starts_with("ALTER TABLESPACE ") {
        return GlobalStatement::Tablespace { sql };
    }
    GlobalStatement::Other { sql }
}

/// The first SQL identifier of `text`, unquoted.
fn leading_identifier(text: &str) -> Option<String> {
    let text = text.trim_start();
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let name: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
        .collect();
    (!name.is_empty()).then(|| name.to_lowercase())
}

/// Roles the script creates, in order.
pub fn roles(statements: &[GlobalStatement]) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    for s in statements {
        if let GlobalStatement::Role { role, sql } = s {
            if sql
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE ROLE")
                && !roles.contains(role)
            {
                roles.push(role.clone());
            }
        }
    }
    roles
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "--\n-- PostgreSQL database cluster dump\n--\n\nSET default_transaction_read_only = off;\n\n--\n-- Roles\n--\n\nCREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT LOGIN;\nCREATE ROLE \"Mixed \"\"Case\";\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\nCREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';\nGRANT app_owner TO \"Mixed \"\"Case\" GRANTED BY postgres;\n";

    #[test]
    fn statements_are_classified() {
        let s = parse(SCRIPT);
        assert_eq!(s.len(), 8);
        assert_eq!(
            s[1],
            GlobalStatement::Role {
                role: "app_owner".into(),
                sql: "CREATE ROLE app_owner;".into()
            }
        );
        assert!(matches!(&s[3], GlobalStatement::Role { role, .. } if role == "Mixed \"Case"));
        assert!(matches!(&s[6], GlobalStatement::Tablespace { .. }));
        assert!(matches!(&s[7], GlobalStatement::Other { sql } if sql.starts_with("GRANT")));
        assert_eq!(roles(&s), vec!["app_owner", "Mixed \"Case", "postgres"]);
    }

    #[test]
    fn multi_line_statements_are_joined() {
        let s = parse("ALTER ROLE a SET search_path TO 'x\ny';\n");
        assert_eq!(s.len(), 1);
        assert!(matches!(&s[0], GlobalStatement::Role { role, .. } if role == "a"));
    }
}
