// keepsake/keepsake.hpp: everything in one include, but the stores, which
// are included one by one (keepsake/stores/*.hpp) as spdlog's sinks are.
#pragma once

#include "keepsake/call_result.hpp"
#include "keepsake/clock.hpp"
#include "keepsake/codec.hpp"
#include "keepsake/crash_reports.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/exporter.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/objects/directory.hpp"
#include "keepsake/log.hpp"
#include "keepsake/recovery.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/store.hpp"
#include "keepsake/supervisor.hpp"
#include "keepsake/unit.hpp"
#include "keepsake/unit_registry.hpp"
#include "keepsake/unit_types.hpp"
#include "keepsake/version.hpp"
