//! OpenSSH's pattern lists (`match.c`): comma-separated globs with `*` and `?`,
//! where a pattern prefixed by `!` vetoes the whole list. `allowed_signers`
//! uses them for principals and for `namespaces="…"`.

/// Whether `s` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob_matches(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Iterative wildcard matching with single-star backtracking: linear in
    // practice and never recursive, so hostile patterns cannot blow the stack.
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((star_pi, star_si)) = star {
            pi = star_pi + 1;
            si = star_si + 1;
            star = Some((star_pi, star_si + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// OpenSSH `match_pattern_list`: true when some positive pattern matches and no
/// negated (`!`) pattern does.
pub fn list_matches(s: &str, list: &str) -> bool {
    let mut positive = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(negated) if glob_matches(s, negated) => return false,
            Some(_) => {}
            None if glob_matches(s, pattern) => positive = true,
            None => {}
        }
    }
    positive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("git", "git"));
        assert!(glob_matches("git", "g*"));
        assert!(glob_matches("git", "*"));
        assert!(glob_matches("", "*"));
        assert!(glob_matches("git", "g?t"));
        assert!(!glob_matches("gt", "g?t"));
        assert!(!glob_matches("file", "git"));
        assert!(glob_matches("alice@example.com", "*@example.com"));
        assert!(!glob_matches("alice@example.org", "*@example.com"));
        assert!(glob_matches("abcbcd", "a*bcd"));
        assert!(!glob_matches("a", ""));
    }

    #[test]
    fn lists_with_negation() {
        assert!(list_matches("git", "file,git"));
        assert!(!list_matches("git", "file"));
        assert!(!list_matches("git", "*,!git"));
        assert!(list_matches("git", "*,!file"));
        assert!(
            !list_matches("git", "!file"),
            "a list of only negations matches nothing"
        );
    }

    #[test]
    fn hostile_pattern_is_fast_enough_to_finish() {
        let s = "a".repeat(2000);
        let p = "*a".repeat(500) + "b";
        assert!(!glob_matches(&s, &p));
    }
}
