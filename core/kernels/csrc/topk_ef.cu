// Top-k gradient sparsification with error feedback, in one pass (DGC-style threshold).
//
// Given a gradient bucket g (n floats), its error-feedback residual r (n floats, updated in
// place) and a magnitude threshold t estimated from a sample, every element a = g[i] + r[i]
// with |a| >= t is emitted as (i, a) into the output slots (up to `capacity`; the slot is
// taken with one atomicAdd on a counter) and its residual is zeroed; every other element,
// and any selected beyond capacity, is kept in r for the next step. Outputs past the count
// stay (0, 0.0), so a fixed-size payload decodes with index_add unchanged.
#include <torch/extension.h>
#include <cuda.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAStream.h>

template <typename scalar_t>
__global__ void topk_ef_kernel(const scalar_t* __restrict__ grad,
                               scalar_t* __restrict__ residual,
                               const float threshold,
                               const int64_t n,
                               const int64_t capacity,
                               int32_t* __restrict__ out_idx,
                               scalar_t* __restrict__ out_val,
                               int32_t* __restrict__ count) {
  const int64_t stride = (int64_t)blockDim.x * gridDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float a = (float)grad[i] + (float)residual[i];
    bool sent = false;
    if (fabsf(a) >= threshold) {
      const int32_t slot = atomicAdd(count, 1);
      if (slot < capacity) {
        out_idx[slot] = (int32_t)i;
        out_val[slot] = (scalar_t)a;
        sent = true;
      }
    }
    residual[i] = sent ? (scalar_t)0 : (scalar_t)a;
  }
}

// Returns (indices int32 [capacity], values [capacity], count int32 [1]); residual updated.
std::vector<torch::Tensor> topk_ef(torch::Tensor grad, torch::Tensor residual, double threshold,
                                   int64_t capacity) {
  TORCH_CHECK(grad.is_cuda() && residual.is_cuda(), "topk_ef: CUDA tensors expected");
  TORCH_CHECK(grad.is_contiguous() && residual.is_contiguous(), "topk_ef: contiguous tensors expected");
  TORCH_CHECK(grad.numel() == residual.numel(), "topk_ef: grad and residual sizes differ");
  TORCH_CHECK(grad.scalar_type() == residual.scalar_type(), "topk_ef: dtypes differ");
  TORCH_CHECK(grad.numel() < (int64_t)INT32_MAX, "topk_ef: bucket larger than int32 indices");
  const int64_t n = grad.numel();
  auto idx = torch::zeros({capacity}, grad.options().dtype(torch::kInt32));
  auto val = torch::zeros({capacity}, grad.options());
  auto count = torch::zeros({1}, grad.options().dtype(torch::kInt32));
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 65535);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "topk_ef", [&] {
    topk_ef_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        grad.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(), (float)threshold, n, capacity,
        idx.data_ptr<int32_t>(), val.data_ptr<scalar_t>(), count.data_ptr<int32_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {idx, val, count};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("topk_ef", &topk_ef, "sampled-threshold top-k with error feedback (CUDA)");
}
