//! Merging several Prometheus text expositions (one per model) into one: each metric family
//! appears once, with its `# HELP`/`# TYPE` lines and then every sample of every source, as the
//! text format requires.

/// One family: its header lines and samples, in order.
#[derive(Default)]
struct Family {
    name: String,
    header: Vec<String>,
    samples: Vec<String>,
}

/// The family a comment line declares (`# HELP name ...`, `# TYPE name ...`).
fn declared(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))?;
    rest.split_whitespace().next()
}

/// The metric name of a sample line (before `{` or a space).
fn sample_name(line: &str) -> &str {
    let end = line.find(['{', ' ']).unwrap_or(line.len());
    &line[..end]
}

/// Whether a sample of `name` belongs to family `family` (histogram and summary parts).
fn belongs(name: &str, family: &str) -> bool {
    name == family
        || name
            .strip_prefix(family)
            .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count" | "_total"))
}

/// Merges `texts`, keeping the first source's order of families.
pub fn merge<'a>(texts: impl IntoIterator<Item = &'a str>) -> String {
    let mut families: Vec<Family> = Vec::new();
    for text in texts {
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(name) = declared(line) {
                let idx = match families.iter().position(|f| f.name == name) {
                    Some(i) => i,
                    None => {
                        families.push(Family {
                            name: name.to_string(),
                            ..Family::default()
                        });
                        families.len() - 1
                    }
                };
                let f = &mut families[idx];
                if !f.header.iter().any(|h| h == line) {
                    // The same family declared twice with different help keeps the first.
                    let kind = &line[..6];
                    if !f.header.iter().any(|h| h.starts_with(kind)) {
                        f.header.push(line.to_string());
                    }
                }
                current = Some(idx);
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = sample_name(line);
            let idx = match current.filter(|&i| belongs(name, &families[i].name)) {
                Some(i) => i,
                None => match families.iter().position(|f| belongs(name, &f.name)) {
                    Some(i) => i,
                    None => {
                        families.push(Family {
                            name: name.to_string(),
                            ..Family::default()
                        });
                        families.len() - 1
                    }
                },
            };
            families[idx].samples.push(line.to_string());
            current = Some(idx);
        }
    }
    let mut out = String::new();
    for f in families {
        for l in f.header.iter().chain(&f.samples) {
            out.push_str(l);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_all_samples() {
        let a = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{model_name=\"a\"} 1\n\n\
                 # TYPE h histogram\nh_bucket{model_name=\"a\",le=\"1\"} 0\nh_sum{model_name=\"a\"} 0\nh_count{model_name=\"a\"} 0\n";
        let b = "# HELP x_total Things.\n# TYPE x_total counter\nx_total{model_name=\"b\"} 2\n\
                 # TYPE h histogram\nh_bucket{model_name=\"b\",le=\"1\"} 1\nh_count{model_name=\"b\"} 1\n";
        let m = merge([a, b]);
        assert_eq!(m.matches("# TYPE x_total").count(), 1);
        assert_eq!(m.matches("# HELP x_total").count(), 1);
        assert_eq!(m.matches("# TYPE h ").count(), 1);
        let x = m.find("x_total{model_name=\"b\"}").unwrap();
        let h = m.find("# TYPE h ").unwrap();
        assert!(x < h, "x samples stay together:\n{m}");
        assert!(m.contains("h_count{model_name=\"b\"} 1"));
    }
}
