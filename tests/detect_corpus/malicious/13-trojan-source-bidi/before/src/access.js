export function canEdit(user) {
  return user.role === 'admin';
}
