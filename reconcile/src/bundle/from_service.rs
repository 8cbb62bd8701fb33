//! [`ContainerRequest`] from the model's normalized `ServiceSpec`: the one
//! place that maps compose semantics onto the bundle builder's input.

use super::{ContainerRequest, Limits, MountRequest, NetworkMode, Ulimit};
use cntnr_model::{
    config_hash, Mount, NetworkMode as ModelNetwork, ProjectName, Replica, ServiceName, ServiceSpec,
};

impl ContainerRequest {
    /// The request for replica `replica` of `service` in `project`.
    /// Anonymous volumes become per-replica named volumes
    /// `anon_<service>_<replica>_<n>` (kept across recreation, like a
    /// docker compose anonymous volume that `up` reattaches). Negative ulimits
    /// mean unlimited. Health checks, ports, networks, restart and deploy
    /// policies are the agent's and the CNI hook's business, not the bundle's:
    /// for a bridge service the agent sets [`ContainerRequest::bridge`].
    pub fn from_service(
        project: &ProjectName,
        service: &ServiceName,
        spec: &ServiceSpec,
        replica: Replica,
    ) -> Self {
        let mut anon = 0;
        let mounts = spec
            .volumes
            .iter()
            .map(|m| match m {
                Mount::Bind {
                    source,
                    target,
                    read_only,
                    ..
                } => MountRequest::Bind {
                    source: source.clone(),
                    target: target.clone(),
                    read_only: *read_only,
                },
                Mount::Volume {
                    source,
                    target,
                    read_only,
                    ..
                } => {
                    let name = source.clone().unwrap_or_else(|| {
                        anon += 1;
                        format!("anon_{}_{replica}_{anon}", service.as_str())
                    });
                    MountRequest::Volume {
                        name,
                        target: target.clone(),
                        read_only: *read_only,
                    }
                }
                Mount::Tmpfs { target, tmpfs } => MountRequest::Tmpfs {
                    target: target.clone(),
                    size: tmpfs.size,
                    mode: tmpfs.mode,
                },
            })
            .collect();
        let unlimited = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
        ContainerRequest {
            project: project.as_str().to_string(),
            service: service.as_str().to_string(),
            replica,
            config_hash: config_hash(spec).as_str().to_string(),
            entrypoint: spec.entrypoint.clone(),
            command: spec.command.clone(),
            environment: spec.environment.clone(),
            working_dir: spec.working_dir.clone(),
            user: spec.user.clone(),
            hostname: spec.hostname.clone(),
            domainname: spec.domainname.clone(),
            extra_hosts: spec
                .extra_hosts
                .iter()
                .map(|h| (h.host.clone(), h.ip.to_string()))
                .collect(),
            dns: spec.dns.iter().map(|ip| ip.to_string()).collect(),
            dns_search: spec.dns_search.clone(),
            mounts,
            read_only: spec.read_only,
            cap_add: spec.cap_add.clone(),
            cap_drop: spec.cap_drop.clone(),
            privileged: spec.privileged,
            ulimits: spec
                .ulimits
                .iter()
                .map(|(name, u)| Ulimit {
                    name: name.clone(),
                    soft: unlimited(u.soft),
                    hard: unlimited(u.hard),
                })
                .collect(),
            sysctls: spec.sysctls.clone(),
            limits: Limits {
                cpus: spec.deploy.resources.limits.cpus,
                memory: spec
                    .deploy
                    .resources
                    .limits
                    .memory
                    .map(|m| m.min(i64::MAX as u64) as i64),
                pids: spec.deploy.resources.limits.pids,
            },
            init: spec.init,
            stop_signal: spec.stop_signal.clone(),
            network: match spec.network_mode {
                ModelNetwork::Bridge => NetworkMode::Bridge,
                ModelNetwork::Host => NetworkMode::Host,
                ModelNetwork::None => NetworkMode::None,
            },
            annotations: {
                // Kept on the container so a removal after the project is
                // gone from the store still honours it.
                let mut a = spec.annotations.clone();
                if let Some(g) = spec.stop_grace_period {
                    a.insert(
                        crate::runtime::annotations::STOP_GRACE.to_string(),
                        g.as_millis().to_string(),
                    );
                }
                a
            },
            bridge: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_service_maps_onto_a_container_request() {
        let yaml = r#"
services:
  web:
    image: busybox
    entrypoint: ["/bin/sh", "-c"]
    command: ["echo hi"]
    environment: {A: "1"}
    user: "app:extra"
    working_dir: /srv
    read_only: true
    cap_drop: [NET_RAW]
    ulimits: {nofile: {soft: 100, hard: 200}}
    volumes: ["data:/data:ro", "/srv/host:/host", {type: tmpfs, target: /tmp, tmpfs: {size: 1048576}}, "/anon"]
    network_mode: host
    stop_signal: SIGUSR1
    deploy: {resources: {limits: {cpus: "0.5", memory: 64M, pids: 10}}}
volumes:
  data: {}
"#;
        let project = ProjectName::new("shop").unwrap();
        let p = cntnr_model::load_stored(&project, "projects/shop", yaml).expect("compose loads");
        let name = ServiceName::new("web").unwrap();
        let spec = &p.services[&name];
        let r = ContainerRequest::from_service(&project, &name, spec, 2);
        assert_eq!(
            (r.project.as_str(), r.service.as_str(), r.replica),
            ("shop", "web", 2)
        );
        assert_eq!(r.config_hash, config_hash(spec).as_str());
        assert_eq!(
            r.entrypoint.as_deref(),
            Some(&["/bin/sh".to_string(), "-c".to_string()][..])
        );
        assert_eq!(r.environment["A"], "1");
        assert_eq!(r.user.as_deref(), Some("app:extra"));
        assert!(r.read_only);
        assert_eq!(
            r.ulimits,
            vec![Ulimit {
                name: "nofile".into(),
                soft: 100,
                hard: 200
            }]
        );
        assert_eq!(r.network, NetworkMode::Host);
        assert_eq!(r.limits.pids, Some(10));
        assert_eq!(r.limits.memory, Some(64 << 20));
        assert!(r.mounts.contains(&MountRequest::Volume {
            name: "data".into(),
            target: "/data".into(),
            read_only: true
        }));
        assert!(r.mounts.contains(&MountRequest::Volume {
            name: "anon_web_2_1".into(),
            target: "/anon".into(),
            read_only: false
        }));
        assert!(r.mounts.contains(&MountRequest::Tmpfs {
            target: "/tmp".into(),
            size: Some(1 << 20),
            mode: None
        }));
    }
}
