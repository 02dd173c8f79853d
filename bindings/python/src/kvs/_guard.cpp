// kvs._kvs.ReadGuard: one kvs_read_begin .. kvs_read_end, and the
// zero-copy memoryviews of values read inside it (see _table.cpp's head:
// the guard releases them when it ends).
#include <cstring>

#include "_kvs.hpp"

namespace kvs_py {
namespace {

GuardObject* open_guard(PyObject* self) {
  auto* g = reinterpret_cast<GuardObject*>(self);
  if (g->txn == nullptr) {
    PyErr_SetString(PyExc_ValueError, "the read guard has ended");
    return nullptr;
  }
  if (!pthread_equal(g->thread, pthread_self())) {
    PyErr_SetString(PyExc_RuntimeError, "a read guard is used by the thread that began it");
    return nullptr;
  }
  return g;
}

// What a view exports: bytes in shared memory, and the guard (so that the
// guard, and the table's mapping, outlive every export of the view).
struct ValueObject {
  PyObject_HEAD PyObject* guard;
  char* data;
  Py_ssize_t len;
};

// Exports are counted in the guard: a memoryview made from a view shares
// its buffer, so releasing the view does not end the export; the guard
// ends only once no buffer of it is exported.
int value_getbuffer(PyObject* self, Py_buffer* v, int flags) {
  auto* x = reinterpret_cast<ValueObject*>(self);
  if (PyBuffer_FillInfo(v, self, x->data, x->len, /*readonly=*/1, flags) != 0) return -1;
  ++reinterpret_cast<GuardObject*>(x->guard)->exports;
  return 0;
}

void value_releasebuffer(PyObject* self, Py_buffer*) {
  --reinterpret_cast<GuardObject*>(reinterpret_cast<ValueObject*>(self)->guard)->exports;
}

void value_dealloc(PyObject* self) {
  Py_XDECREF(reinterpret_cast<ValueObject*>(self)->guard);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyType_Slot value_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(value_dealloc)},
                             {Py_bf_getbuffer, reinterpret_cast<void*>(value_getbuffer)},
                             {Py_bf_releasebuffer, reinterpret_cast<void*>(value_releasebuffer)},
                             {0, nullptr}};

// A read-only view of `len` bytes at `p`, remembered for release.
PyObject* view(GuardObject* g, const void* p, size_t len) {
  auto* x = PyObject_New(ValueObject, state().value_type);
  if (x == nullptr) return nullptr;
  Py_INCREF(g);
  x->guard = reinterpret_cast<PyObject*>(g);
  x->data = static_cast<char*>(const_cast<void*>(p));
  x->len = static_cast<Py_ssize_t>(len);
  PyObject* v = PyMemoryView_FromObject(reinterpret_cast<PyObject*>(x));
  Py_DECREF(x);
  // A weak reference: the view holds the guard, not the other way round.
  PyObject* ref = v ? PyWeakref_NewRef(v, nullptr) : nullptr;
  if (ref == nullptr || PyList_Append(g->views, ref) != 0) Py_CLEAR(v);
  Py_XDECREF(ref);
  return v;
}

// Releases every view still alive; false (BufferError set) if a buffer of
// the guard is still exported.
bool release_views(GuardObject* g) {
  const Py_ssize_t n = PyList_GET_SIZE(g->views);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* v = PyWeakref_GetObject(PyList_GET_ITEM(g->views, i));
    if (v == Py_None) continue;
    PyObject* r = PyObject_CallMethod(v, "release", nullptr);
    if (r == nullptr) PyErr_Clear();  // exported further: counted below
    Py_XDECREF(r);
  }
  if (g->exports > 0) {
    PyErr_SetString(PyExc_BufferError,
                    "a view of this read guard is still exported (by numpy.frombuffer, for "
                    "instance): the guard stays open until it is released; end it again then");
    return false;
  }
  return PyList_SetSlice(g->views, 0, n, nullptr) == 0;
}

PyObject* guard_end(PyObject* self, PyObject*) {
  auto* g = reinterpret_cast<GuardObject*>(self);
  if (g->txn == nullptr) Py_RETURN_NONE;
  if (open_guard(self) == nullptr || !release_views(g)) return nullptr;
  kvs_read_end(g->txn);
  g->txn = nullptr;
  Py_RETURN_NONE;
}

PyObject* guard_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  GuardObject* g = open_guard(self);
  if (g == nullptr || !check_args("get", nargs, 1, 1)) return nullptr;
  Key key;
  if (!key.from(args[0])) return nullptr;
  const void* v = nullptr;
  size_t len = 0;
  const int rc = kvs_get(g->txn, key.data, key.len, &v, &len);
  if (rc == KVS_ENOTFOUND) Py_RETURN_NONE;
  if (rc != KVS_OK) return raise(rc);
  return view(g, v, len);
}

PyObject* guard_items(PyObject* self, PyObject*) {
  GuardObject* g = open_guard(self);
  if (g == nullptr) return nullptr;
  PyObject* out = PyList_New(0);
  if (out == nullptr) return nullptr;
  struct Ctx {
    GuardObject* g;
    PyObject* out;
  } ctx{g, out};
  const int rc = kvs_for_each(
      g->txn,
      [](void* c, const void* k, size_t kl, const void* v, size_t vl) -> int {
        auto* x = static_cast<Ctx*>(c);
        PyObject* key =
            PyBytes_FromStringAndSize(static_cast<const char*>(k), static_cast<Py_ssize_t>(kl));
        PyObject* val = key ? view(x->g, v, vl) : nullptr;
        PyObject* pair = val ? PyTuple_Pack(2, key, val) : nullptr;
        const int bad = pair == nullptr || PyList_Append(x->out, pair) != 0;
        Py_XDECREF(key);
        Py_XDECREF(val);
        Py_XDECREF(pair);
        return bad;
      },
      &ctx);
  if (rc == 0) return out;
  Py_DECREF(out);
  return PyErr_Occurred() ? nullptr : raise(rc);
}

PyObject* guard_enter(PyObject* self, PyObject*) {
  Py_INCREF(self);
  return self;
}

PyObject* guard_exit(PyObject* self, PyObject* const*, Py_ssize_t) {
  return guard_end(self, nullptr);
}

void guard_dealloc(PyObject* self) {
  auto* g = reinterpret_cast<GuardObject*>(self);
  // Collected without end(): no view exports its memory any more (each
  // holds the guard), so it ends here.
  if (g->txn != nullptr) kvs_read_end(g->txn);
  Py_XDECREF(g->views);
  Py_XDECREF(g->owner);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef guard_methods[] = {
    {"get", fastcall(guard_get), METH_FASTCALL,
     "get(key) -> memoryview | None: the value in shared memory, valid until the guard ends"},
    {"items", guard_items, METH_NOARGS, "items() -> list[(bytes, memoryview)]"},
    {"end", guard_end, METH_NOARGS, "end(): ends the guard and releases its views"},
    {"__enter__", guard_enter, METH_NOARGS, nullptr},
    {"__exit__", fastcall(guard_exit), METH_FASTCALL, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot guard_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(guard_dealloc)},
                             {Py_tp_methods, guard_methods},
                             {Py_tp_doc, const_cast<char*>("A read guard (kvs.ReadGuard)")},
                             {0, nullptr}};

}  // namespace

PyType_Spec value_spec = {"kvs._kvs.Value", sizeof(ValueObject), 0, Py_TPFLAGS_DEFAULT,
                          value_slots};

PyType_Spec guard_spec = {"kvs._kvs.ReadGuard", sizeof(GuardObject), 0, Py_TPFLAGS_DEFAULT,
                          guard_slots};

}  // namespace kvs_py
