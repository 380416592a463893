//! nutcracker's rules for scalar values: digits-only numbers and `true`/`false`.

/// A number as nutcracker's `nc_atoi` reads it: ASCII digits only (no sign, no spaces),
/// here also bounded so it cannot overflow. `Err` holds the message.
pub fn number(text: &str, max: u64) -> Result<u64, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" is not a number (digits only, no sign)"));
    }
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(format!("\"{text}\" is too large (at most {max})")),
    }
}

/// A boolean: exactly `true` or `false`, as nutcracker requires (`yes`/`on` are errors).
pub fn boolean(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("\"{text}\" is not \"true\" or \"false\"")),
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn suggestion<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|&(d, c)| d <= 2.max(c.len() / 4))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over bytes (config keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(number("400", 1000), Ok(400));
        assert_eq!(number("0", 10), Ok(0));
        assert!(number("-1", 10).is_err());
        assert!(number(" 1", 10).is_err());
        assert!(number("0x10", 100).is_err());
        assert!(number("", 10).is_err());
        assert!(number("99999999999999999999999", u64::MAX).is_err());
        assert!(number("11", 10).is_err());
    }

    #[test]
    fn booleans_are_true_or_false() {
        assert_eq!(boolean("true"), Ok(true));
        assert_eq!(boolean("false"), Ok(false));
        assert!(boolean("yes").is_err());
        assert!(boolean("True").is_err());
    }

    #[test]
    fn suggests_near_names() {
        let keys = ["distribution", "listen", "hash"];
        assert_eq!(suggestion("distrbution", keys), Some("distribution"));
        assert_eq!(suggestion("lisen", keys), Some("listen"));
        assert_eq!(suggestion("completely_else", keys), None);
    }
}
