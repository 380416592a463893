//! Fields of an `INFO` reply's text (`name:value` lines), which cutover reads for a
//! server's engine and version, its `run_id` and its replication offset.

/// The value of field `name` in the text of an `INFO` reply.
pub fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim_end)
    })
}

#[cfg(test)]
mod tests {
    use super::info_field;

    #[test]
    fn info_fields_are_read_by_whole_name() {
        let text = "$90\r\n# Server\r\nredis_version:7.2.4\r\nredis_version_x:no\r\nrun_id:abc123\r\nuptime_in_seconds:5\r\n";
        assert_eq!(info_field(text, "redis_version"), Some("7.2.4"));
        assert_eq!(info_field(text, "run_id"), Some("abc123"));
        assert_eq!(info_field(text, "run"), None);
        assert_eq!(info_field(text, "missing"), None);
    }
}
