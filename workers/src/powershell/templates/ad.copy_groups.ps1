$template = Get-StewardAdUser -Identity ([string]$p.template)
$user = Get-StewardAdUser -Identity ([string]$p.member)
$has = @($user.MemberOf | ForEach-Object { [string]$_ })
$added = New-Object System.Collections.ArrayList
$already = New-Object System.Collections.ArrayList
$protected = New-Object System.Collections.ArrayList
$StewardPrior = [ordered]@{ added = $added }
foreach ($groupDn in @($template.MemberOf | ForEach-Object { [string]$_ })) {
    if ($has -contains $groupDn) {
        $null = $already.Add($groupDn)
        continue
    }
    # Never copy privileged groups (adminCount = 1: Domain Admins, Account Operators, ...).
    $group = Get-ADGroup @StewardAd -Identity $groupDn -Properties adminCount
    if ($group.adminCount -eq 1) {
        $null = $protected.Add($groupDn)
        continue
    }
    Add-ADGroupMember @StewardAd -Identity $groupDn -Members ([string]$user.DistinguishedName) -Confirm:$false
    $null = $added.Add($groupDn)
}
$status = 'unchanged'
if ($added.Count -gt 0) { $status = 'changed' }
return (Out-StewardResult -Status $status -Result ([ordered]@{ member = [string]$user.DistinguishedName; added = $added; already_member = $already; skipped_privileged = $protected }) -Prior $StewardPrior)
