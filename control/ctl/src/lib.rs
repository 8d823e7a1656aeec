//! zmeshctl's library: the network-namespace [`topology`] (fabric, nodes, controller, node
//! agents and proxies, pods) that `zmeshctl demo`, the end-to-end tests (`zmesh-tests`) and the
//! benchmarks (`zmesh-perf`) run on. Linux only, and root: namespaces, cgroups, bpffs.
#![forbid(unsafe_code)]

pub mod topology;
