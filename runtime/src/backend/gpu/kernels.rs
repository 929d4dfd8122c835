//! The WGSL kernels (`wgsl/`), compiled once per device (`start.rs`), and the recorder that puts
//! their dispatches into one compute pass and submits it when results are read back.

use wgpu::util::DeviceExt;

/// How a kernel uses a buffer binding.
#[derive(Clone, Copy)]
enum Slot {
    Read,
    ReadWrite,
}

/// One compute pipeline with its bind group layout: binding 0 is the dispatch's
/// parameters (a 256-byte slot of the uniform ring, at a dynamic offset), bindings
/// `1..` storage buffers.
pub(super) struct Kernel {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Kernel {
    fn new(
        device: &wgpu::Device,
        cache: Option<&wgpu::PipelineCache>,
        name: &str,
        source: &str,
        slots: &[Slot],
    ) -> Self {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let mut entries = vec![wgpu::BindGroupLayoutEntry {
            binding: 0,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: None,
            },
            count: None,
        }];
        for (i, s) in slots.iter().enumerate() {
            entries.push(wgpu::BindGroupLayoutEntry {
                binding: i as u32 + 1,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(s, Slot::Read),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            });
        }
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(name),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(name),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache,
        });
        Self { pipeline, layout }
    }
}

/// Every kernel of the backend.
pub(super) struct Kernels {
    pub matvec: Kernel,
    /// `matvec` reading the RMSNorm of its input rows (`matvec_xnorm.wgsl`).
    pub matvec_norm: Kernel,
    /// `matvec.wgsl`'s tiled twin for batches (`matmul.wgsl`).
    pub matmul: Kernel,
    /// `matvec.wgsl`'s twin with int8 activations.
    pub matvec_int8: Kernel,
    pub embed: Kernel,
    pub rms_norm: Kernel,
    pub rope_kv: Kernel,
    pub attention: Kernel,
    pub elementwise: Kernel,
    pub argmax: Kernel,
    /// The largest logits for a sampler (`top.wgsl`).
    pub top: Kernel,
}

impl Kernels {
    /// Compiles every kernel on `device`, through `cache` if given.
    pub fn new(device: &wgpu::Device, cache: Option<&wgpu::PipelineCache>) -> Self {
        use Slot::*;
        let kernel = |name: &str, source: &str, slots: &[Slot]| {
            Kernel::new(device, cache, name, source, slots)
        };
        let matvec_slots = [
            Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, Read,
        ];
        Self {
            matvec: kernel(
                "matvec",
                &per_matrix_source(MATVEC, include_str!("wgsl/matvec_x.wgsl")),
                &matvec_slots,
            ),
            matvec_norm: kernel(
                "matvec_norm",
                &per_matrix_source(MATVEC, include_str!("wgsl/matvec_xnorm.wgsl")),
                &matvec_slots,
            ),
            matmul: kernel(
                "matmul",
                &per_matrix_source(include_str!("wgsl/matmul.wgsl"), ""),
                &matvec_slots,
            ),
            matvec_int8: kernel(
                "matvec_int8",
                &per_matrix_source(include_str!("wgsl/matvec_int8.wgsl"), ""),
                &matvec_slots,
            ),
            embed: kernel(
                "embed",
                &format!(
                    "{}\n{}",
                    WEIGHT.replace('#', ""),
                    include_str!("wgsl/embed.wgsl")
                ),
                &[Read, Read, ReadWrite],
            ),
            rms_norm: kernel(
                "rms_norm",
                include_str!("wgsl/rmsnorm.wgsl"),
                &[Read, Read, ReadWrite],
            ),
            rope_kv: kernel(
                "rope_kv",
                include_str!("wgsl/rope_kv.wgsl"),
                &[Read, ReadWrite, ReadWrite, Read, ReadWrite, ReadWrite],
            ),
            attention: kernel(
                "attention",
                include_str!("wgsl/attention.wgsl"),
                &[Read, Read, Read, ReadWrite, ReadWrite],
            ),
            elementwise: kernel(
                "elementwise",
                include_str!("wgsl/elementwise.wgsl"),
                &[ReadWrite, Read],
            ),
            argmax: kernel(
                "argmax",
                include_str!("wgsl/argmax.wgsl"),
                &[Read, ReadWrite],
            ),
            top: kernel("top", include_str!("wgsl/top.wgsl"), &[Read, ReadWrite]),
        }
    }
}

/// The f32-activation matrix kernel, before its input reader.
const MATVEC: &str = include_str!("wgsl/matvec.wgsl");

/// The weight readers, prefixed to the kernels that read matrices.
const WEIGHT: &str = include_str!("wgsl/weight.wgsl");

/// The line after which `weight.wgsl` and the matrix kernels hold per-matrix functions.
const PER_MATRIX: &str = "// PER MATRIX";

/// A kernel over three bound matrices (`matvec.wgsl`, `matvec_int8.wgsl`, `matmul.wgsl`) with
/// `weight.wgsl`'s readers, their shared declarations (`matvec_common.wgsl`), its `input` reader (for `matvec.wgsl`: `matvec_x.wgsl` or
/// `matvec_xnorm.wgsl`) and its own per-matrix functions written once per matrix (`#`
/// replaced by 0, 1, 2), so no word read chooses a binding.
fn per_matrix_source(kernel: &str, input: &str) -> String {
    let (weight_head, readers) = WEIGHT.split_once(PER_MATRIX).expect("marked");
    let (kernel_head, per_matrix) = kernel.split_once(PER_MATRIX).expect("marked");
    let template = format!("{readers}\n{per_matrix}");
    let copies: String = (0..3)
        .map(|m| template.replace('#', &m.to_string()))
        .collect();
    let common = include_str!("wgsl/matvec_common.wgsl");
    format!("{weight_head}\n{common}\n{kernel_head}\n{input}\n{copies}")
}

/// Bytes of one dispatch's parameter slot (the largest `min_uniform_buffer_offset_alignment`
/// WebGPU allows).
pub(super) const SLOT: u64 = 256;

/// A buffer range bound to a kernel.
#[derive(Clone, Copy)]
pub(super) struct Bind<'a> {
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset (a multiple of 256).
    pub offset: u64,
    /// Bytes; `None`: to the end.
    pub size: Option<u64>,
}

impl<'a> Bind<'a> {
    /// The whole buffer.
    pub fn all(buffer: &'a wgpu::Buffer) -> Self {
        Self {
            buffer,
            offset: 0,
            size: None,
        }
    }
}

/// Workgroups `(x, y)` covering `threads` threads of 64 in one dimension, spilling into
/// `y` past the 65535-workgroup limit of `x` (kernels index `x + y * nwg.x * 64`).
pub(super) fn grid(threads: usize) -> (u32, u32) {
    let groups = threads.div_ceil(64).max(1);
    if groups <= 65535 {
        (groups as u32, 1)
    } else {
        (65535, groups.div_ceil(65535) as u32)
    }
}

/// Records dispatches into one compute pass of one command encoder; their parameters
/// (and per-batch host data: token ids, RoPE angles) go into two rings written to the
/// GPU once, at submit. So a forward pass is one submit however many dispatches it has.
pub(super) struct Recorder {
    params_buf: wgpu::Buffer,
    data_buf: wgpu::Buffer,
    params: Vec<u8>,
    data: Vec<u8>,
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Dispatches and submits so far.
    pub dispatches: u64,
    pub submits: u64,
}

impl Recorder {
    /// A recorder with room for `slots` dispatches and `data_bytes` of host data per
    /// submit (more is split into several submits).
    pub fn new(device: &wgpu::Device, slots: usize, data_bytes: u64) -> Self {
        let params_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: slots as u64 * SLOT,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let data_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("host data"),
            size: data_bytes.max(SLOT).next_multiple_of(SLOT),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Self {
            params_buf,
            data_buf,
            params: Vec::new(),
            data: Vec::new(),
            encoder: None,
            pass: None,
            dispatches: 0,
            submits: 0,
        }
    }

    /// Submits first if `dispatches` more dispatches and `data_bytes` more host data
    /// would not fit.
    pub fn reserve(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        dispatches: usize,
        data_bytes: usize,
    ) {
        let params_full =
            self.params.len() as u64 + dispatches as u64 * SLOT > self.params_buf.size();
        let data_full = (self.data.len() + data_bytes).next_multiple_of(SLOT as usize) as u64
            > self.data_buf.size();
        if params_full || data_full {
            self.submit(device, queue);
        }
    }

    /// Appends host data (after [`Recorder::reserve`]); returns the offset, in 4-byte
    /// words, of the first in [`Recorder::data_buffer`].
    pub fn push_data(&mut self, words: &[u32]) -> u32 {
        let at = self.data.len();
        for w in words {
            self.data.extend_from_slice(&w.to_le_bytes());
        }
        self.data
            .resize(self.data.len().next_multiple_of(SLOT as usize), 0);
        assert!(
            self.data.len() as u64 <= self.data_buf.size(),
            "reserve first"
        );
        (at / 4) as u32
    }

    /// The host data buffer (a handle to bind whole).
    pub fn data_buffer(&self) -> wgpu::Buffer {
        self.data_buf.clone()
    }

    fn pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        let encoder = self
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()));
        self.pass.get_or_insert_with(|| {
            encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default())
                .forget_lifetime()
        })
    }

    /// Records one dispatch of `k` with `params` (u32 words; f32 as bits) over
    /// `binds` (bindings 1..) and `groups` workgroups.
    pub fn dispatch(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        k: &Kernel,
        params: &[u32],
        binds: &[Bind<'_>],
        groups: (u32, u32, u32),
    ) {
        if groups.0 == 0 || groups.1 == 0 || groups.2 == 0 {
            return;
        }
        self.reserve(device, queue, 1, 0);
        let offset = self.params.len() as u32;
        for w in params {
            self.params.extend_from_slice(&w.to_le_bytes());
        }
        self.params.resize(offset as usize + SLOT as usize, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.params_buf,
                offset: 0,
                size: wgpu::BufferSize::new(SLOT),
            }),
        }];
        for (i, b) in binds.iter().enumerate() {
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: b.size.and_then(wgpu::BufferSize::new),
                }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &k.layout,
            entries: &entries,
        });
        let pass = self.pass(device);
        pass.set_pipeline(&k.pipeline);
        pass.set_bind_group(0, &group, &[offset]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        self.dispatches += 1;
    }

    /// Records a copy (ends the compute pass; the next dispatch starts another).
    pub fn copy(
        &mut self,
        device: &wgpu::Device,
        from: &wgpu::Buffer,
        to: &wgpu::Buffer,
        bytes: u64,
    ) {
        self.pass = None;
        let encoder = self
            .encoder
            .get_or_insert_with(|| device.create_command_encoder(&Default::default()));
        encoder.copy_buffer_to_buffer(from, 0, to, 0, bytes);
    }

    /// Writes the rings and submits everything recorded (nothing if nothing was).
    pub fn submit(&mut self, _device: &wgpu::Device, queue: &wgpu::Queue) {
        self.pass = None;
        let Some(encoder) = self.encoder.take() else {
            return;
        };
        if !self.params.is_empty() {
            queue.write_buffer(&self.params_buf, 0, &self.params);
        }
        if !self.data.is_empty() {
            queue.write_buffer(&self.data_buf, 0, &self.data);
        }
        queue.submit([encoder.finish()]);
        self.params.clear();
        self.data.clear();
        self.submits += 1;
    }
}

/// A buffer holding `bytes` (`STORAGE | COPY_SRC`), made with its contents.
pub(super) fn upload(device: &wgpu::Device, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
    })
}
