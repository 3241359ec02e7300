//! Writing metric families on a registry's encoder, one call per family: what every part's
//! `Collector` does at a scrape, written once. Pure text encoding (prometheus-client's
//! OpenMetrics encoder): no registry, no clock, no globals.

use std::fmt;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric as _,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// A family without labels: its name (counters without `_total`), help and value.
pub type Family<'a, V> = (&'a str, &'a str, V);

/// One unlabelled counter family per entry of `families` (counts, or seconds as `f64`).
pub fn counters<V: EncodeCounterValue + Copy>(
    enc: &mut DescriptorEncoder<'_>,
    families: &[Family<'_, V>],
) -> fmt::Result {
    for &(name, help, value) in families {
        ConstCounter::new(value).encode(enc.encode_descriptor(
            name,
            help,
            None,
            MetricType::Counter,
        )?)?;
    }
    Ok(())
}

/// One unlabelled gauge family per entry of `families`.
pub fn gauges<V: EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder<'_>,
    families: &[Family<'_, V>],
) -> fmt::Result {
    for &(name, help, value) in families {
        ConstGauge::new(value).encode(enc.encode_descriptor(
            name,
            help,
            None,
            MetricType::Gauge,
        )?)?;
    }
    Ok(())
}

/// Counter family `name` with one sample per `(labels, value)` of `samples`.
pub fn counter_by<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Gauge family `name` with one sample per `(labels, value)` of `samples`.
pub fn gauge_by<L: EncodeLabelSet, V: EncodeGaugeValue>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}
