//! Fixtures shared by Weir's tests and benchmarks (not published): real
//! servers started on 127.0.0.1 on free ports ([`servers`]), Kafka
//! helpers that create topics and produce records ([`kafka`]), a QoS 1
//! MQTT publisher ([`mqtt`]) and test certificates for TLS ([`tls`]).

pub mod kafka;
pub mod mqtt;
pub mod servers;
pub mod tls;
