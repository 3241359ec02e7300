//! Reading Prometheus text (`/metrics`): one parser for every test and benchmark.

/// The value of the sample `key` (its name with labels, exactly as printed), if present.
pub fn value(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The sum of the samples whose name and labels start with `prefix` (0 when none).
pub fn sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// Fetches `/metrics` from `base` (`http://host:port`) with `http`.
pub async fn scrape(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let url = format!("{base}/metrics");
    let resp = http.get(&url).send().await?;
    anyhow::ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    Ok(resp.text().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total X.\n# TYPE x_total counter\nx_total{dc=\"dc1\"} 3\n\
                        x_total{dc=\"dc2\"} 4.5\ny 7\n";

    #[test]
    fn values_and_sums() {
        assert_eq!(value(TEXT, "x_total{dc=\"dc2\"}"), Some(4.5));
        assert_eq!(value(TEXT, "y"), Some(7.0));
        assert_eq!(
            value(TEXT, "x_total"),
            None,
            "a key is the whole name with labels"
        );
        assert_eq!(sum(TEXT, "x_total{"), 7.5);
        assert_eq!(sum(TEXT, "z"), 0.0);
    }
}
