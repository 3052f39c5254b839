// keepsake/keepsake.hpp: everything in one include.
#pragma once

#include "keepsake/clock.hpp"
#include "keepsake/codec.hpp"
#include "keepsake/error.hpp"
#include "keepsake/events.hpp"
#include "keepsake/keeper.hpp"
#include "keepsake/log.hpp"
#include "keepsake/restart_policy.hpp"
#include "keepsake/runtime.hpp"
#include "keepsake/segment.hpp"
#include "keepsake/supervisor.hpp"
#include "keepsake/unit.hpp"
#include "keepsake/version.hpp"
