// Owning pointers to OpenSSL objects, each freed with the library's own free function.
#pragma once

#include <memory>

namespace zoogate {

// A unique_ptr deleter that calls OpenSSL's `Free` (BIO_free, X509_free, EVP_MD_CTX_free, ...).
template <auto Free>
struct OpenSslFree {
  template <typename T>
  void operator()(T* object) const {
    Free(object);
  }
};

// OpenSslPtr<BIO, BIO_free> owns one BIO; default-constructed, it owns nothing.
template <typename T, auto Free>
using OpenSslPtr = std::unique_ptr<T, OpenSslFree<Free>>;

}  // namespace zoogate
