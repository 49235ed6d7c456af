"""InnerProduct (fully connected): a record of its rules and the op that runs
it (dense, float lookup tables, or 8-bit tables in SIMD registers in fast mode)."""
from .. import _kernels, buffers
from .base import MAX_DIM, is_int, np, register
from .weighted import (DEQUANTIZE_RATIO, WeightedOp, WeightedType, block_fc_indices, dequantize,
                       dequantize_fc, fc_codebook_t, fc_register_layout,
                       layer_cost)


class FCOp(WeightedOp):
    def _plan(self, qf, w, where, cout):
        self.cin = buffers.count(self.in_shapes[0])
        if self.mode != "lut":
            self._use(w["weight"], "f32", (cout, self.cin))
            return
        self._plan_lut(qf, w, where, self.cin, (cout,))
        dense_cost, table, lookups = self.cost()
        q8 = self.fast and self.K <= 32   # 8-bit lookups are far cheaper than multiply-adds
        if self.dense_small and not q8 and table + lookups > DEQUANTIZE_RATIO * dense_cost:
            # tables would cost clearly more than the dense layer: dequantize (same sums)
            self.strategy = "dequantized"
            self._use_unpacked_indices()
            self.derived_bytes = 4 * cout * self.cin
        elif self.K <= 32:
            # fast: 8-bit tables; exact: float tables small enough to be looked up
            # inside registers.  Unpacked and laid out in one pass.
            self.index_bits = 8
            if q8:
                self.strategy = "lut8"
                # where the instruction set unpacks them in registers (AVX-512),
                # indices stay packed: 5 bits for K=32, 4 for K=16 (a third or
                # half less to stream from memory per image)
                if _kernels.fc_q8_packs():
                    self.index_bits = _kernels.fc_q8_index_bits(self.K)
            self.derived_bytes = _kernels.fc_q8_layout_size(cout, self.M)
            if self.index_bits < 8:
                self.derived_bytes = _kernels.fc_q8_packed_size(self.derived_bytes,
                                                                self.index_bits)
        else:
            self._use_unpacked_indices()
            self.derived_bytes = cout * self.M
        if self.strategy != "dequantized":
            self.derived_bytes += 4 * self.M * self.K * self.d    # the transposed codebook

    def _load(self, qf, w, cout):
        if self.mode != "lut":
            self.weight = self._finite(qf.view(w["weight"]), "weight tensor")
        elif self.strategy == "dequantized":
            taps = buffers.reshape(self._unpacked_indices(), (cout, 1, self.M))
            self.weight = buffers.reshape(dequantize(self.codebook, taps, self.cin),
                                          (cout, self.cin))
        elif self.K <= 32:
            stream, bits = qf.packed(self._idx_name)
            self.indices, top = fc_register_layout(stream, (cout, self.M), bits)
            self._check_top(top)
            qf.release(self._idx_name)
            if self.index_bits < 8:
                packed = buffers.empty((_kernels.fc_q8_packed_size(self.indices.shape[0],
                                                                   self.index_bits),), "B")
                _kernels.fc_q8_pack(self.indices, self.index_bits, packed)
                self.indices = packed
        else:
            self.indices = block_fc_indices(self._unpacked_indices(), self.K)
        if self.mode == "lut" and self.strategy != "dequantized":
            self.codebook_t = fc_codebook_t(self.codebook)

    def workspace(self):
        if self.strategy == "lut8":
            return _kernels.fc_q8_workspace_floats(self.M, self.K, self.params["num_output"])
        if self.strategy == "lut" and self.K <= 32:
            return _kernels.fc_f32_workspace_floats(self.M, self.K, self.params["num_output"])
        return self.M * self.K if self.strategy == "lut" else 0

    def cost(self):
        lut = self.strategy in ("lut", "lut8")
        return layer_cost(self.L, self.in_shapes[0], self.out_shape,
                          self.K if lut else None, self.M if lut else None)

    def run(self, xs, ws, nthreads, relu):
        x = buffers.reshape(xs[0], (xs[0].shape[0], -1))
        out = self.new_out(x.shape[0])
        if self.strategy == "lut8":
            _kernels.fc_q8(x, self.codebook_t, self.indices, self.params["num_output"], self.bias,
                           relu, out, ws, nthreads, self.index_bits)
        elif self.strategy == "lut" and self.K <= 32:
            _kernels.fc_f32(x, self.codebook_t, self.indices, self.params["num_output"], self.bias,
                            relu, out, ws, nthreads)
        elif self.strategy == "lut":
            _kernels.fc_lut(x, self.codebook_t, self.indices, self.bias, relu, out, ws, nthreads)
        else:
            _kernels.fc_dense(x, self.weight, self.bias, relu, out, nthreads)
        return out



    def dense_weights(self):
        """(w [Cout, Cin], bias) as numpy arrays: dequantized when quantized."""
        import numpy
        w = (dequantize_fc(self.codebook, self.stored_indices(), self.cin) if self.mode == "lut"
             else self.weight)
        return numpy.asarray(w), numpy.asarray(self.bias)



@register
class InnerProduct(WeightedType):
    """num_output, bias_term (bool); the input is flattened."""

    type = "InnerProduct"
    Op = FCOp

    def check(self, p, need):
        need(is_int(p.get("num_output"), 1, MAX_DIM), "num_output")

    def shape(self, p, ins, where):
        return (p["num_output"],)

    def reference(self, p, xs, wb):
        n_ = np()
        x = xs[0]
        y = x.reshape(x.shape[0], -1).astype(n_.float64) @ wb[0].T.astype(n_.float64)
        if wb[1] is not None:
            y += wb[1]
        return y.astype(n_.float32)
