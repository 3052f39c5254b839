// keepsake/keepsake.hpp: everything in one include, but the stores, which
// are included one by one (keepsake/stores/*.hpp) as spdlog's sinks are.
#pragma once

#include "keepsake/codec.hpp"
#include "keepsake/error.hpp"
#include "keepsake/exporter.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/log.hpp"
#include "keepsake/recovery.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"
#include "keepsake/version.hpp"
