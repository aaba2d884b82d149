//! Names of a run's input files inside its container: no `/`, no `..`, `config.json` reserved,
//! a repeated name suffixed `-1`, `-2`... before its extension.

use std::collections::{HashMap, HashSet};

pub(crate) const CONFIG_FILE: &str = "config.json";

fn sanitise(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    match clean.trim() {
        "" | "." | ".." => "input".to_owned(),
        other => other.to_owned(),
    }
}

fn with_suffix(name: &str, n: usize) -> String {
    // Before the first dot that is not the first character: reads.fastq.gz -> reads-1.fastq.gz
    match name.char_indices().skip(1).find(|&(_, c)| c == '.') {
        Some((i, _)) => format!("{}-{n}{}", &name[..i], &name[i..]),
        None => format!("{name}-{n}"),
    }
}

/// The in-container names of `names`, in order, in time linear in their number: each base name
/// remembers the last suffix it handed out, so thousands of repeats of one name never rescan.
pub(crate) fn input_names(names: &[String]) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::from([CONFIG_FILE.to_owned()]);
    let mut next_suffix: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let base = sanitise(name);
        let mut candidate = base.clone();
        if taken.contains(&candidate) {
            let n = next_suffix.entry(base.clone()).or_insert(0);
            loop {
                *n += 1;
                candidate = with_suffix(&base, *n);
                if !taken.contains(&candidate) {
                    break;
                }
            }
        }
        taken.insert(candidate.clone());
        out.push(candidate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_and_unique() {
        let names: Vec<String> = [
            "reads.fastq.gz",
            "../../etc/passwd",
            "reads.fastq.gz",
            "config.json",
            "..",
            "a\nb",
            "dir/sub/x.txt",
            ".hidden",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            input_names(&names),
            vec![
                "reads.fastq.gz",
                "passwd",
                "reads-1.fastq.gz",
                "config-1.json",
                "input",
                "a_b",
                "x.txt",
                ".hidden",
            ]
        );
    }

    #[test]
    fn many_repeats_are_named_uniquely() {
        let names = vec!["reads.fq".to_owned(); 20_000];
        let named = input_names(&names);
        let unique: HashSet<&String> = named.iter().collect();
        assert_eq!(unique.len(), 20_000);
        assert_eq!(named[19_999], "reads-19999.fq");
    }
}
