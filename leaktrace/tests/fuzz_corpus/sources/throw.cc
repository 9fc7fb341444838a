// C++ with exceptions: its .eh_frame has personality and LSDA pointers
// (augmentation "zPLR"), which the C seeds lack.
#include <new>
struct Oops {};
extern "C" int guarded(int n) {
    try {
        if (n > 3) throw Oops{};
        return n;
    } catch (const Oops &) {
        return -1;
    }
}
