//! Fixtures shared by Weir's tests, benchmarks and examples (not published):
//! the sensor-window workload's pipeline, generator and reference
//! ([`sensor`]), the workload examples' shared command line ([`cli`]), finding an example's binary to spawn it ([`example`]), real
//! servers started on 127.0.0.1 on free ports ([`servers`]), Kafka helpers
//! that create topics and produce records ([`kafka`]), a QoS 1 MQTT publisher
//! ([`mqtt`]) and test certificates for TLS ([`tls`]).

pub mod alerts;
pub mod cli;
pub mod example;
pub mod kafka;
pub mod mqtt;
pub mod sensor;
pub mod servers;
pub mod tls;
