// Internal to src/observers: constructors of the observer kinds that live in their own files.
#pragma once

#include <memory>

#include "lwq/observers.h"

namespace lwq {

std::unique_ptr<Observer> make_kl_observer(const ObserverOptions& options);  // histogram.cpp

}  // namespace lwq
