/*
 * edgeports SSM kernels: the plain C interface of libedgeports_ssm_kernels.so.
 *
 * One entry point per op of the kernel contract (notes: KERNELS.md). No TensorRT here: the same
 * functions serve the IPluginV3 plugins (trt/) and the Python ctypes binding
 * (edgeports/kernels/impl_cuda.py), so the GPU tests exercise exactly what the engine runs.
 *
 * Conventions
 *  - Every tensor is dense and row-major in the shape the contract gives (the one exception:
 *    selective_state_update takes element strides for A, D and dt_bias so that expand()ed views
 *    need no copy). Each tensor carries its dtype (EP_F32/EP_F16/EP_BF16); kernels convert on
 *    load and accumulate in float32. An optional input is absent when its data is NULL.
 *  - Functions are out-of-place and enqueue on `stream` (a cudaStream_t; NULL = legacy default).
 *  - Return 0 on success, a negative EP_ERR_* for bad arguments, or a positive cudaError_t.
 *  - Scans that split the sequence into chunks for parallelism need a device workspace of
 *    edgeports_*_workspace(params) bytes; the size depends only on the params and the current
 *    device, and grows monotonically with seqlen (so a plugin can size it from the max shape).
 */
#ifndef EDGEPORTS_SSM_H
#define EDGEPORTS_SSM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EDGEPORTS_SSM_ABI_VERSION 1

enum { EP_F32 = 0, EP_F16 = 1, EP_BF16 = 2 };
enum { EP_OK = 0, EP_ERR_ARGS = -1, EP_ERR_WORKSPACE = -2, EP_ERR_UNSUPPORTED = -3 };
enum { EP_ACT_NONE = 0, EP_ACT_SILU = 1 };

typedef struct {
    const void* data; /* NULL = absent (optional inputs only) */
    int32_t dtype;    /* EP_F32 | EP_F16 | EP_BF16 */
} ep_in;

typedef struct {
    void* data;
    int32_t dtype;
} ep_out;

/* Mamba1 prefill.  u, delta, z: [batch, dim, seqlen]  A: [dim, dstate]  B, C: [batch, dstate, seqlen]
 * D, delta_bias: [dim]  initial_state: [batch, dim, dstate]
 * -> y: [batch, dim, seqlen], final_state: [batch, dim, dstate]  (dstate <= 64) */
typedef struct {
    int32_t batch, dim, dstate, seqlen;
    int32_t delta_softplus;
    ep_in u, delta, A, B, C, D, z, delta_bias, initial_state;
    ep_out y, final_state;
} ep_selective_scan_params;

/* Mamba2 prefill (SSD).  x, z: [batch, seqlen, nheads, headdim]  dt: [batch, seqlen, nheads]  A, D, dt_bias: [nheads]
 * B, C: [batch, seqlen, ngroups, dstate]  initial_state: [batch, nheads, headdim, dstate]
 * -> y: [batch, seqlen, nheads, headdim], final_state: [batch, nheads, headdim, dstate]  (dstate <= 512)
 * The contract's chunk_size is a blocking hint of other implementations; these kernels choose their own. */
typedef struct {
    int32_t batch, seqlen, nheads, headdim, ngroups, dstate;
    int32_t dt_softplus;
    float dt_min, dt_max;
    ep_in x, dt, A, B, C, D, z, dt_bias, initial_state;
    ep_out y, final_state;
} ep_ssd_params;

/* Decode step (Mamba1 with nheads=1, Mamba2 with its heads).  state: [batch, nheads, headdim, dstate]
 * x, dt, z: [batch, nheads, headdim]  A: [nheads, headdim, dstate]  B, C: [batch, ngroups, dstate]
 * D, dt_bias: [nheads, headdim].  A/D/dt_bias are read through the element strides below (0 = broadcast).
 * -> y: [batch, nheads, headdim], new_state: [batch, nheads, headdim, dstate] (must not alias state) */
typedef struct {
    int32_t batch, nheads, headdim, ngroups, dstate;
    int32_t dt_softplus;
    int64_t a_stride[3];       /* A strides for (head, p, n) */
    int64_t d_stride[2];       /* D strides for (head, p) */
    int64_t dt_bias_stride[2]; /* dt_bias strides for (head, p) */
    ep_in state, x, dt, A, B, C, D, z, dt_bias;
    ep_out y, new_state;
} ep_ssu_params;

/* Depthwise causal conv.  x: [batch, dim, seqlen]  weight: [dim, width]  bias: [dim]
 * initial_state: [batch, dim, width-1]  -> y: [batch, dim, seqlen], final_state: [batch, dim, width-1]
 * (width <= 64) */
typedef struct {
    int32_t batch, dim, seqlen, width;
    int32_t activation; /* EP_ACT_* */
    ep_in x, weight, bias, initial_state;
    ep_out y, final_state;
} ep_conv_params;

/* One step of the conv.  x: [batch, dim]  conv_state: [batch, dim, width-1]
 * -> y: [batch, dim], new_conv_state: [batch, dim, width-1] (must not alias conv_state) */
typedef struct {
    int32_t batch, dim, width;
    int32_t activation;
    ep_in x, conv_state, weight, bias;
    ep_out y, new_conv_state;
} ep_conv_update_params;

int edgeports_ssm_abi_version(void);
const char* edgeports_ssm_error_string(int code);

size_t edgeports_selective_scan_workspace(const ep_selective_scan_params* p);
int edgeports_selective_scan(const ep_selective_scan_params* p, void* workspace, size_t workspace_bytes, void* stream);

size_t edgeports_ssd_chunk_scan_workspace(const ep_ssd_params* p);
int edgeports_ssd_chunk_scan(const ep_ssd_params* p, void* workspace, size_t workspace_bytes, void* stream);

int edgeports_selective_state_update(const ep_ssu_params* p, void* stream);

int edgeports_causal_conv1d(const ep_conv_params* p, void* stream);
int edgeports_causal_conv1d_update(const ep_conv_update_params* p, void* stream);

/* The host reference (kernels/host_reference.cpp, plain C++, no CUDA): the same params and signatures, all
 * pointers in host memory, `stream` ignored, run to completion before returning. It serves ONNX Runtime's
 * CPU execution provider in the custom-op library (ort/) and is tested against the Python reference. */
size_t edgeports_host_selective_scan_workspace(const ep_selective_scan_params* p);
int edgeports_host_selective_scan(const ep_selective_scan_params* p, void* workspace, size_t workspace_bytes, void* stream);
size_t edgeports_host_ssd_chunk_scan_workspace(const ep_ssd_params* p);
int edgeports_host_ssd_chunk_scan(const ep_ssd_params* p, void* workspace, size_t workspace_bytes, void* stream);
int edgeports_host_selective_state_update(const ep_ssu_params* p, void* stream);
int edgeports_host_causal_conv1d(const ep_conv_params* p, void* stream);
int edgeports_host_causal_conv1d_update(const ep_conv_update_params* p, void* stream);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPORTS_SSM_H */
