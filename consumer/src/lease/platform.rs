//! Where this worker runs, as the Java KCL 3.x decides it to choose the CPU metric it publishes
//! (`WorkerMetricsSelector` over `EcsResource`, `EksResource` and `Ec2Resource`, in that order;
//! the first platform found decides): `CONSUMER_WORKER_CPU_SOURCE=kcl`.
//!
//! - **ECS**: `ECS_CONTAINER_METADATA_URI` or `ECS_CONTAINER_METADATA_URI_V4` set. The KCL
//!   publishes CPU only with the v4 endpoint, read from the task's stats there; this worker
//!   reads the container's cgroup instead (v2, else v1), the same CPU time against the
//!   container's limit.
//! - **EKS**: the Kubernetes service-account token file exists: the cgroup, v2 when
//!   `cgroup.controllers` exists, v1 when the `cpu` or `memory` hierarchy does.
//! - **EC2**: the instance metadata service (IMDSv2, through the SDK's client, which honours
//!   `AWS_EC2_METADATA_SERVICE_ENDPOINT` and `AWS_EC2_METADATA_DISABLED`) answers the
//!   instance-identity document: `/proc/stat`.
//! - **Elsewhere**: no CPU (a "default" worker, which a KCL leader balances by throughput),
//!   which is what the KCL publishes there too.

use std::path::Path;
use std::time::Duration;

use kinesis_common::config::CpuSource;

const ECS_METADATA_V3: &str = "ECS_CONTAINER_METADATA_URI";
const ECS_METADATA_V4: &str = "ECS_CONTAINER_METADATA_URI_V4";
const K8S_TOKEN: &str = "var/run/secrets/kubernetes.io/serviceaccount/token";
const IDENTITY_DOCUMENT: &str = "/latest/dynamic/instance-identity/document";
/// The whole EC2 probe's deadline (the KCL gives each of its two calls 5 s).
const IMDS_DEADLINE: Duration = Duration::from_secs(3);

/// The compute platform as the KCL names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Ecs,
    Eks,
    Ec2,
    /// None of the three.
    Other,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::Ecs => "ECS",
            Platform::Eks => "EKS",
            Platform::Ec2 => "EC2",
            Platform::Other => "none",
        }
    }
}

/// What the KCL looks at, but EC2 (a network call, made only when the others say nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts {
    pub ecs_v3: bool,
    pub ecs_v4: bool,
    pub k8s_token: bool,
    /// `/sys/fs/cgroup/cgroup.controllers` exists.
    pub cgroup_v2: bool,
    /// `/sys/fs/cgroup/cpu` or `/sys/fs/cgroup/memory` exists.
    pub cgroup_v1: bool,
}

impl Facts {
    /// The facts under `root` (`/` outside tests) and in this process's environment.
    pub fn read(root: &Path) -> Self {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        let cgroup = root.join("sys/fs/cgroup");
        Self {
            ecs_v3: set(ECS_METADATA_V3),
            ecs_v4: set(ECS_METADATA_V4),
            k8s_token: root.join(K8S_TOKEN).exists(),
            cgroup_v2: cgroup.join("cgroup.controllers").exists(),
            cgroup_v1: cgroup.join("cpu").exists() || cgroup.join("memory").exists(),
        }
    }

    fn cgroup(self) -> CpuSource {
        if self.cgroup_v2 {
            CpuSource::CgroupV2
        } else if self.cgroup_v1 {
            CpuSource::CgroupV1
        } else {
            CpuSource::None
        }
    }
}

/// The platform and the CPU source the KCL would use, from `facts` and, only when they name
/// neither ECS nor EKS, whether `on_ec2` says the instance metadata service answers.
pub async fn decide<F>(facts: Facts, on_ec2: F) -> (Platform, CpuSource)
where
    F: std::future::Future<Output = bool>,
{
    if facts.ecs_v3 || facts.ecs_v4 {
        let source = if facts.ecs_v4 {
            facts.cgroup()
        } else {
            CpuSource::None
        };
        return (Platform::Ecs, source);
    }
    if facts.k8s_token {
        return (Platform::Eks, facts.cgroup());
    }
    if on_ec2.await {
        return (Platform::Ec2, CpuSource::ProcStat);
    }
    (Platform::Other, CpuSource::None)
}

/// Whether the instance metadata service answers the instance-identity document, within
/// [`IMDS_DEADLINE`], one attempt.
pub async fn on_ec2() -> bool {
    let client = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build();
    match tokio::time::timeout(IMDS_DEADLINE, client.get(IDENTITY_DOCUMENT)).await {
        Ok(Ok(_)) => true,
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "no instance metadata service: not on EC2");
            false
        }
        Err(_) => false,
    }
}

/// The platform and CPU source for `CONSUMER_WORKER_CPU_SOURCE=kcl`, under `root`.
pub async fn detect(root: &Path) -> (Platform, CpuSource) {
    decide(Facts::read(root), on_ec2()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn with(facts: Facts, ec2: bool) -> (Platform, CpuSource) {
        decide(facts, async move { ec2 }).await
    }

    #[tokio::test]
    async fn the_first_platform_found_decides_as_in_the_kcl() {
        let v2 = Facts {
            cgroup_v2: true,
            cgroup_v1: true,
            ..Facts::default()
        };
        // ECS: the cgroup with the v4 endpoint; with v3 only, the KCL publishes no CPU, and
        // does not go on to EKS or EC2.
        let ecs4 = Facts { ecs_v4: true, ..v2 };
        assert_eq!(with(ecs4, true).await, (Platform::Ecs, CpuSource::CgroupV2));
        let ecs3 = Facts {
            ecs_v3: true,
            k8s_token: true,
            ..v2
        };
        assert_eq!(with(ecs3, true).await, (Platform::Ecs, CpuSource::None));
        // EKS: v2 before v1; neither mounted: no CPU.
        let eks = Facts {
            k8s_token: true,
            ..v2
        };
        assert_eq!(with(eks, true).await, (Platform::Eks, CpuSource::CgroupV2));
        let eks1 = Facts {
            k8s_token: true,
            cgroup_v1: true,
            ..Facts::default()
        };
        assert_eq!(
            with(eks1, false).await,
            (Platform::Eks, CpuSource::CgroupV1)
        );
        let bare = Facts {
            k8s_token: true,
            ..Facts::default()
        };
        assert_eq!(with(bare, false).await, (Platform::Eks, CpuSource::None));
        // EC2 last: /proc/stat, whatever the cgroups.
        assert_eq!(with(v2, true).await, (Platform::Ec2, CpuSource::ProcStat));
        assert_eq!(with(v2, false).await, (Platform::Other, CpuSource::None));
    }

    #[tokio::test]
    async fn ec2_is_not_asked_when_ecs_or_eks_is_found() {
        let asked = std::sync::atomic::AtomicBool::new(false);
        let probe = async {
            asked.store(true, std::sync::atomic::Ordering::SeqCst);
            true
        };
        let eks = Facts {
            k8s_token: true,
            ..Facts::default()
        };
        decide(eks, probe).await;
        assert!(!asked.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn the_facts_are_read_under_the_root() {
        let root = std::env::temp_dir().join(format!("platform-facts-{}", std::process::id()));
        let token = root.join(K8S_TOKEN);
        std::fs::create_dir_all(token.parent().unwrap()).unwrap();
        std::fs::write(&token, "t").unwrap();
        std::fs::create_dir_all(root.join("sys/fs/cgroup/cpu")).unwrap();
        let facts = Facts::read(&root);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(facts.k8s_token && facts.cgroup_v1 && !facts.cgroup_v2);
    }
}
