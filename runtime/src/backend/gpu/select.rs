//! Which GPUs there are and which one runs: the adapter list for `glint info --gpu`
//! and the choice [`super::GpuBackend::new`] makes.

use crate::backend::BackendError;

/// One adapter as the system reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterReport {
    /// Device name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    /// Graphics API (`Vulkan`, `Metal`).
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// A software rasteriser (lavapipe, SwiftShader): used only when asked for by name.
    pub software: bool,
    /// Driver name.
    pub driver: String,
    /// Driver version text.
    pub driver_info: String,
    /// PCI vendor and device ids.
    pub vendor: u32,
    /// PCI device id.
    pub device: u32,
    /// Largest storage-buffer binding, bytes.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Workgroup shared memory, bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Most invocations in a workgroup.
    pub max_compute_invocations_per_workgroup: u32,
    /// Optional features the adapter has (wgpu's names).
    pub features: String,
}

impl AdapterReport {
    pub(super) fn new(a: &wgpu::Adapter) -> Self {
        let (i, l) = (a.get_info(), a.limits());
        Self {
            name: i.name,
            backend: format!("{:?}", i.backend),
            device_type: format!("{:?}", i.device_type),
            software: i.device_type == wgpu::DeviceType::Cpu,
            driver: i.driver,
            driver_info: i.driver_info,
            vendor: i.vendor,
            device: i.device,
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
            features: format!("{:?}", a.features()),
        }
    }

    /// What identifies this adapter and driver version (the self-test's cache key):
    /// a change of driver means a new self-test.
    pub fn key(&self) -> String {
        format!(
            "{} | {} | {:04x}:{:04x} | {} {}",
            self.name, self.backend, self.vendor, self.device, self.driver, self.driver_info
        )
    }
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

fn all() -> Vec<wgpu::Adapter> {
    pollster::block_on(
        instance().enumerate_adapters(wgpu::Backends::VULKAN | wgpu::Backends::METAL),
    )
}

/// Every Vulkan and Metal adapter of this system, hardware first.
pub fn adapters() -> Vec<AdapterReport> {
    let mut v: Vec<_> = all().iter().map(AdapterReport::new).collect();
    v.sort_by_key(|a| a.software);
    v
}

/// The adapter whose name contains `name` (case-insensitive), or with `None` the first
/// hardware adapter, else the first software one.
pub(super) fn pick(name: Option<&str>) -> Result<wgpu::Adapter, BackendError> {
    let mut found = all();
    found.sort_by_key(|a| a.get_info().device_type == wgpu::DeviceType::Cpu);
    let names: Vec<String> = found.iter().map(|a| a.get_info().name).collect();
    let chosen = match name {
        None => found.into_iter().next(),
        Some(n) => {
            let n = n.to_lowercase();
            found
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&n))
        }
    };
    chosen.ok_or_else(|| {
        BackendError::NoGpu(match name {
            Some(n) if !names.is_empty() => {
                format!("no adapter named like {n:?} among {names:?}")
            }
            _ => "no Vulkan or Metal adapter found (on Linux without a GPU, install Mesa's \
                  lavapipe: mesa-vulkan-drivers and libvulkan1)"
                .to_string(),
        })
    })
}
